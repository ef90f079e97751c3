# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Supermasks: subnetworks of untrained networks that already work
#
# A *supermask* selects weights of a network whose weights are **never trained**. Three ways
# to find one, all in `jaxsparse.supermask`:
#
# 1. **Supermask at initialisation** (Zhou et al. 2019): a lottery-ticket mask (here the
#    `large_final_same_sign` criterion: weights that ended large *and* kept their sign)
#    applied to the initial weights.
# 2. **Learned supermask** (Zhou et al. 2019): a logit per weight, the mask sampled from
#    `Bernoulli(sigmoid(s))` in every forward pass, trained with a straight-through gradient.
# 3. **Edge-popup** (Ramanujan et al. 2020): a score per weight, the top-k of `|score|` kept
#    in every layer (the paper's k = fraction **kept**; jaxsparse's signatures speak
#    `sparsity` = fraction pruned = 1 - k).
#
# LeNet-300-100 on scikit-learn's bundled 8x8 digits (offline). On a CPU, or with
# `JAXSPARSE_SMOKE=1`, a small "smoke" size runs in seconds.

# %%
# Setup: on Colab install jaxsparse (only if missing; never reinstalls jax), then detect the
# accelerator and pick the size. Everywhere else this cell only detects.
import importlib.util
import os
import subprocess
import sys

# What Colab installs: a pip requirement target. Point it at the repository (replace OWNER),
# a fork, a branch (`...jaxsparse.git@my-branch`), a wheel URL or a local checkout path.
JAXSPARSE_SRC = os.environ.get("JAXSPARSE_SRC", "git+https://github.com/OWNER/jaxsparse.git")


def install_on_colab(src: str = JAXSPARSE_SRC) -> None:
    """pip-installs jaxsparse[experiments] on Colab when it is not importable; else no-op."""
    if importlib.util.find_spec("google.colab") is None:
        return
    if importlib.util.find_spec("jaxsparse") is not None:
        return
    if "OWNER" in src:
        raise RuntimeError("set JAXSPARSE_SRC (top of this cell) to the jaxsparse repository, "
                           "e.g. git+https://github.com/<org>/jaxsparse.git")
    from importlib.metadata import PackageNotFoundError, version

    # Pin Colab's own jax/jaxlib so pip keeps them (TPU runtimes ship jax 0.7.x + libtpu).
    pins = []
    for dist in ("jax", "jaxlib"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pass
    with open("/tmp/jaxsparse-constraints.txt", "w") as f:
        f.write("\n".join(pins) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c",
                    "/tmp/jaxsparse-constraints.txt", f"jaxsparse[experiments] @ {src}"],
                   check=True)


install_on_colab()

import jax  # noqa: E402

BACKEND = jax.default_backend()  # "tpu", "gpu" or "cpu"
ACCELERATOR = {"tpu": "TPU", "gpu": "GPU"}.get(BACKEND, "CPU")
# JAXSPARSE_SMOKE=1 forces the small size, =0 forces the full one; default: small on CPU.
SMOKE = os.environ.get("JAXSPARSE_SMOKE", "1" if ACCELERATOR == "CPU" else "0") == "1"
print(f"jax {jax.__version__} | {ACCELERATOR}: {jax.device_count()} x "
      f"{jax.devices()[0].device_kind} | smoke mode: {SMOKE}")

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import jaxsparse as js
import jaxsparse.data
import jaxsparse.models
import jaxsparse.supermask
import jaxsparse.train

STEPS, EVAL_EVERY = (100, 50) if SMOKE else (600, 50)  # supermasks: the recipes' 600
DENSITIES = [0.05, 0.1, 0.3, 0.5] if SMOKE else [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]

ds = js.data.digits()
fn = js.models.functional(js.models.lenet300(key=jax.random.key(0),
                                             input_shape=ds.input_shape,
                                             num_classes=ds.num_classes))
init_params = fn.params
x_test, y_test = jnp.asarray(ds.test.x), jnp.asarray(ds.test.y)
# One compiled evaluation for every (params, masks) below: same shapes, no recompiles.
eval_fn = jax.jit(js.train.make_eval(fn.apply_fn))


def test_accuracy(params, masks):
    return float(eval_fn(params, fn.model_state, masks, x_test, y_test)["accuracy"])


# %% [markdown]
# ## 1. Supermask at initialisation
#
# Train the dense network once to get final weights, then keep the weights that the
# criterion ranks highest, **at their initial values**: no training of the masked network.

# %%
tx = optax.adam(1.2e-3)
dense = js.train.fit(fn.apply_fn, tx, js.train.init_state(init_params, tx,
                                                          key=jax.random.key(1)),
                     ds, num_steps=STEPS, batch_size=60, eval_every=EVAL_EVERY)
final_params = dense.state.params
dense_acc = test_accuracy(final_params, js.ones_like(final_params))
print(f"trained dense net: test accuracy {dense_acc:.4f}")

at_init = {}
for label, criterion, signed in (("large_final_same_sign", "large_final_same_sign", False),
                                 ("large_final_same_sign, signed constant",
                                  "large_final_same_sign", True),
                                 ("random", "random", False)):
    accs = []
    for d in DENSITIES:
        # plotted against density (fraction kept, the paper's axis); jaxsparse speaks sparsity
        params0, masks = js.supermask.at_init(init_params, final_params, sparsity=1 - d,
                                              criterion=criterion, signed_constant=signed,
                                              key=jax.random.key(2))
        accs.append(test_accuracy(params0, masks))
    at_init[label] = accs
    print(f"{label:<40}", " ".join(f"{a:.3f}" for a in accs))

# %% [markdown]
# ## 2. Learned supermask and 3. edge-popup
#
# `js.supermask.learned_supermask` / `edge_popup` wrap the model's `apply_fn`: the trainable
# params become the scores and the frozen weights travel in the model state, so the ordinary
# `js.train.fit` and any optax optimizer train them. Hyperparameters of the recipes in
# `docs/supermask.md`: SGD with a huge learning rate (100) for the Bernoulli logits;
# SGD 0.1 with cosine decay and weight decay for edge-popup's scores.

# %%
def train_supermask(sm, tx, key):
    sm_params, sm_state = sm.init(init_params, fn.model_state, key=key)
    state = js.train.init_state(sm_params, tx, key=key, model_state=sm_state)
    result = js.train.fit(sm.apply, tx, state, ds, num_steps=STEPS, batch_size=100,
                          eval_every=EVAL_EVERY)
    unchanged = all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool((a == b).all()), result.state.model_state["weights"],
        sm_state["weights"])))
    return result, unchanged


learned = js.supermask.learned_supermask(fn.apply_fn, weights="signed_constant", rescale=True)
learned_run, learned_frozen = train_supermask(
    learned, optax.sgd(100.0, momentum=0.9), jax.random.key(3))

popup = js.supermask.edge_popup(fn.apply_fn, sparsity=0.5)  # k = 0.5: keep half of each layer
popup_run, popup_frozen = train_supermask(
    popup, optax.chain(optax.add_decayed_weights(1e-4),
                       optax.sgd(optax.cosine_decay_schedule(0.1, STEPS), momentum=0.9)),
    jax.random.key(4))

results = {"trained dense": dense_acc}
for name, sm, run, frozen in (("learned supermask", learned, learned_run, learned_frozen),
                              ("edge-popup k=0.5", popup, popup_run, popup_frozen)):
    # export: an ordinary dense-with-zeros params tree + bool masks (expected mask for the
    # Bernoulli supermask), usable with the original apply_fn.
    params, masks = sm.export(run.state.params, run.state.model_state)
    results[name] = test_accuracy(params, js.ones_like(params))
    print(f"{name:<20} test accuracy {results[name]:.4f}, density (fraction kept) "
          f"{float(js.density(masks)):.3f}, frozen weights bitwise unchanged: {frozen}")
    report = js.masks.compact_report(masks)
    print(f"{'':<20} hidden units left disconnected: {report['removable']}")
best = max(at_init["large_final_same_sign, signed constant"])
results["best at init (no training)"] = best

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for label, accs in at_init.items():
    axes[0].plot(DENSITIES, accs, marker="o", label=label)
axes[0].axhline(dense_acc, color="gray", ls=":", label="trained dense")
axes[0].axhline(0.1, color="black", ls="--", lw=0.8, label="chance")
axes[0].set(xscale="log", xlabel="density (fraction kept)", ylabel="test accuracy",
            title="supermask at init: untrained weights")
axes[0].legend(fontsize=8)
axes[1].bar(list(results), list(results.values()), color=["gray", "C0", "C1", "C2"])
axes[1].set(ylim=(0, 1), ylabel="test accuracy", title=f"LeNet-300-100 on {ds.name}")
axes[1].tick_params(axis="x", rotation=15)
plt.tight_layout()
plt.show()
