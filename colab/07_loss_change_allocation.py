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
# # Loss Change Allocation and forget-and-relearn
#
# **Loss Change Allocation** (LCA; Lan et al. 2019) splits every iteration's change of the loss
# on a fixed evaluation set among the parameters: for a step `θ_t → θ_{t+1}`,
# `LCA_{t,i} = Δθ_i × ∫ ∂_i L(θ_t + s Δθ) ds` (Simpson's rule: gradients at the start,
# midpoint and end), and the sum over parameters is the loss change. Negative = the parameter
# *helped*. `jaxsparse.lca.recorder` is a hook of the one trainer: it allocates every step on
# the device and keeps only the aggregates you ask for (per parameter, per layer per
# iteration, helping counts...).
#
# **Forget-and-relearn** (Zhou et al. 2022): re-initialise part of a trained network (later
# layers: LLF; everything outside a fixed fit hypothesis: knowledge evolution), retrain, repeat.
# `jaxsparse.relearn.generations` runs the generations over the same trainer.
#
# LeNet-300-100 on scikit-learn's bundled 8x8 digits (offline). On a CPU, or with
# `JAXSPARSE_SMOKE=1`, a small "smoke" size runs in about a minute.

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
import numpy as np
import optax

import jaxsparse as js
import jaxsparse.data
import jaxsparse.lca
import jaxsparse.models
import jaxsparse.relearn
import jaxsparse.train

STEPS = 150 if SMOKE else 1000
GENERATIONS, GEN_STEPS = (3, 150) if SMOKE else (11, 500)

ds = js.data.digits()
fn = js.models.functional(js.models.lenet300(key=jax.random.key(0),
                                             input_shape=ds.input_shape,
                                             num_classes=ds.num_classes))

# %% [markdown]
# ## 1. One step: the allocation adds up to the loss change
#
# `lca_of_step(loss_fn, θ0, θ1, substeps)` is the pure allocation of one step. Its sum
# matches `L(θ1) − L(θ0)` up to the integrator's error, which shrinks with more Simpson
# sub-steps (composite Simpson: `2 × substeps` extra gradient evaluations).

# %%
x_tr, y_tr = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)


def train_loss(params):
    logits, _ = fn.apply_fn(params, fn.model_state, x_tr, train=False, key=None)
    return jnp.mean(js.train.cross_entropy(logits, y_tr))


theta0 = fn.params
theta1 = jax.tree.map(lambda p, g: p - 0.5 * g, theta0, jax.grad(train_loss)(theta0))  # a big step
change = float(train_loss(theta1) - train_loss(theta0))
for n in (1, 2, 4):
    total = sum(float(a.sum()) for a in jax.tree.leaves(
        js.lca.lca_of_step(train_loss, theta0, theta1, substeps=n)))
    print(f"substeps={n}: sum of LCA {total:+.6f}  loss change {change:+.6f}  "
          f"error {total - change:+.2e}")

# %% [markdown]
# ## 2. LCA of a whole training run
#
# The recorder's evaluation set is the whole training set (as in the paper). Pass
# `rec.hook` to the trainer; `js.lca.summarise` reads the aggregates back, with the
# telescoping check `Σ_{t,i} LCA = L(θ_T) − L(θ_0)`.

# %%
rec = js.lca.recorder(fn.apply_fn, (ds.train.x, ds.train.y), num_steps=STEPS)
tx = optax.adam(1.2e-3)
trainer = js.train.Trainer(fn.apply_fn, tx, batch_size=60, hooks=[rec.hook])
state = trainer.init_state(fn.params, key=jax.random.key(1), model_state=fn.model_state)
run = trainer.fit(state, ds, num_steps=STEPS, eval_every=STEPS // 3)
res = js.lca.summarise(rec, run.state.hook_state[0])
frac = js.lca.fraction_helping(res)
print(f"test accuracy {run.history['test_accuracy'][-1]:.4f}")
print(f"sum of LCA {res.total:+.5f} vs loss change {res.loss_end - res.loss_start:+.5f} "
      f"(error {res.error:+.2e})")
print(f"fraction of parameters helping per iteration: mean {frac.mean():.3f}, "
      f"max {frac.max():.3f}")
print("per-layer totals (> 0: the layer hurt):",
      {k: round(v, 4) for k, v in js.lca.layer_totals(res).items()})
sync = js.lca.peak_synchrony(res.per_layer)
print(f"learning peaks shared across layers: {sync['mean_observed']:.2f} "
      f"(shifted-peaks null {sync['mean_null']:.2f})")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
axes[0].plot(frac, lw=0.8)
axes[0].axhline(0.5, color="k", ls="--", lw=0.8)
axes[0].set(xlabel="iteration", ylabel="fraction helping", title="parameters that help")
for j, name in enumerate(res.layers):
    axes[1].plot(np.cumsum(res.per_layer[:, j]), label=name)
axes[1].set(xlabel="iteration", ylabel="cumulative LCA", title="per-layer LCA")
axes[1].legend()
img = js.lca.input_image(res, "fc0/kernel", (8, 8))
lim = float(np.abs(img).max())
im = axes[2].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
axes[2].set_title("LCA per input pixel (blue: helped)")
axes[2].axis("off")
fig.colorbar(im, ax=axes[2])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Forget-and-relearn with label noise
#
# 20% of the training labels are replaced by another class. Later-layer forgetting
# re-initialises `fc1` and `head` between generations; the control trains the same number of
# iterations as one plain run. The columns: test accuracy, training accuracy on clean examples
# and on noisy ones (fitting their noisy label = memorisation), and how much of what each
# group had fitted the forgetting step undid.

# %%
y_noisy, noisy = js.relearn.inject_label_noise(ds.train.y, 0.2, num_classes=10,
                                               key=jax.random.key(3))
noisy_data = {"train": (ds.train.x, np.asarray(y_noisy)), "val": ds.val, "test": ds.test}
runs = {}
for name, forget in (("LLF", js.relearn.later_layers("fc1")), ("plain", None)):
    runs[name] = js.relearn.generations(
        fn.apply_fn, tx, fn.params, noisy_data, forget=forget, num_generations=GENERATIONS,
        num_steps=GEN_STEPS, batch_size=60, eval_every=GEN_STEPS, key=jax.random.key(4),
        init_fn=lambda k: fn.init_fn(k)[0], noisy=np.asarray(noisy), true_labels=ds.train.y)
    print(name)
    print(js.relearn.table_text(runs[name].table, ["generation", "step", "test_accuracy",
                                                   "clean_accuracy", "noisy_accuracy",
                                                   "forgotten_clean", "forgotten_noisy"]))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for i, (name, r) in enumerate(runs.items()):
    g = [row["generation"] for row in r.table]
    axes[0].plot(g, [row["test_accuracy"] for row in r.table], marker="o", label=name)
    axes[1].plot(g, [row["clean_accuracy"] for row in r.table], marker="o", color=f"C{i}",
                 label=f"{name}: clean")
    axes[1].plot(g, [row["noisy_accuracy"] for row in r.table], marker="s", ls="--",
                 color=f"C{i}", label=f"{name}: noisy (fits noisy label)")
axes[0].set(xlabel="generation", ylabel="test accuracy")
axes[1].set(xlabel="generation", ylabel="training accuracy")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
