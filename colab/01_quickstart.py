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
# # jaxsparse quickstart: masks on the Flax model you already have
#
# Masks in jaxsparse are plain pytrees with the params' structure (`bool` leaves), so they
# drop into any Flax code base without touching the model. In a few lines each, this
# notebook prunes a **Flax NNX** model and a **Linen** model, prints the per-layer report,
# trains with `jaxsparse.masked(tx)` (pruned weights get exactly zero update), and exports
# the sparse weights.
#
# Runs on TPU, GPU or CPU. On a CPU (or with `JAXSPARSE_SMOKE=1`) it picks a small "smoke"
# size so it finishes in seconds.

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
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

import jaxsparse as js
import jaxsparse.data
import jaxsparse.models
import jaxsparse.train

STEPS = 60 if SMOKE else 1500  # training iterations per model
BATCH = 60
# Everything this notebook writes (the exported model) goes here, never into the cwd.
OUT_DIR = os.environ.get("JAXSPARSE_OUT") or tempfile.mkdtemp(prefix="jaxsparse_quickstart_")

# scikit-learn's 1,797 real 8x8 handwritten digits: bundled, no download.
ds = js.data.digits()
x_train, y_train = jax.numpy.asarray(ds.train.x), jax.numpy.asarray(ds.train.y)
x_test, y_test = jax.numpy.asarray(ds.test.x), jax.numpy.asarray(ds.test.y)
print(ds.name, ds.train.x.shape, "->", ds.num_classes, "classes")


# %% [markdown]
# ## 1. A Flax NNX model
#
# Any NNX module: here a two-layer MLP written the usual way. `nnx.split` gives its params
# as an `nnx.State`, which is a pytree, so `jaxsparse` works on it directly.

# %%
class MLP(nnx.Module):
    def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(nnx.relu(self.hidden(x)))


model = MLP(64, 256, 10, rngs=nnx.Rngs(0))
graphdef, params = nnx.split(model, nnx.Param)

# %% [markdown]
# **Prune**: score, then keep the top entries. `ones_like` marks kernels prunable and biases
# not (scalar `True`); `prune` keeps exact counts. Here 90% sparsity in every layer
# (`scope="layerwise"`; the default `"global"` ranks all layers together).

# %%
masks = js.ones_like(params)
masks = js.prune(js.scores.magnitude(params), masks, sparsity=0.9, scope="layerwise")
params = js.apply_masks(params, masks)
print(js.report(masks))
print(f"density (fraction kept) {float(js.density(masks)):.3f}, "
      f"sparsity (fraction pruned) {float(js.sparsity(masks)):.3f}")

# %% [markdown]
# **Train** with `js.masked(tx)`: any optax optimizer; the masks are passed at update time,
# so they stay values you own (rewind them, checkpoint them, vmap over them).

# %%
tx = js.masked(optax.adam(1e-3))
opt_state = tx.init(params)


def loss_fn(params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def train_step(params, opt_state, masks, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
    return optax.apply_updates(params, updates), opt_state, loss


rng = np.random.default_rng(0)
nnx_losses = []
for _ in range(STEPS):
    idx = rng.choice(len(x_train), BATCH, replace=False)
    params, opt_state, loss = train_step(params, opt_state, masks, x_train[idx], y_train[idx])
    nnx_losses.append(float(loss))

kernel = params["hidden"]["kernel"]
pruned_nonzero = int(jax.numpy.count_nonzero(jax.numpy.where(masks["hidden"]["kernel"],
                                                             0.0, kernel[...])))
logits = nnx.merge(graphdef, params)(x_test)
nnx_acc = float((logits.argmax(-1) == y_test).mean())
print(f"NNX MLP at 90% sparsity: test accuracy {nnx_acc:.3f}; "
      f"nonzero pruned weights after training: {pruned_nonzero}")

# %% [markdown]
# **Export**: put the sparse weights back into the model object (`nnx.update`), and/or save
# params + masks with orbax and a per-layer density report (`js.export_ticket`).

# %%
nnx.update(model, params)
print("model output matches:", bool(jax.numpy.allclose(model(x_test), logits)))

# export_ticket takes plain pytrees: State.to_pure_dict() gives nested dicts of arrays.
export_dir = js.export_ticket(os.path.join(OUT_DIR, "nnx_mlp"), params.to_pure_dict(),
                              masks.to_pure_dict(), metadata={"test_accuracy": nnx_acc})
print(open(os.path.join(export_dir, "density.txt")).read())
loaded_params, loaded_masks = js.load_ticket(export_dir, like=params)
same = jax.tree.map(lambda a, b: bool((a == b).all()), loaded_params, params)
print("reloaded params identical:", all(jax.tree.leaves(same)))


# %% [markdown]
# ## 2. A Linen model, trained by the jaxsparse engine
#
# Linen params are a nested dict: the same calls work. This time the per-layer densities
# come from the ERK allocation (Evci et al. 2020) for 80% overall sparsity, and training uses
# `js.train` (the whole loop is compiled: one `lax.scan` per evaluation interval).

# %%
class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(nn.Conv(16, (3, 3), name="conv0")(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2, name="conv1")(x))
        x = nn.relu(nn.Dense(64, name="fc")(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, name="head")(x)


fn = js.models.functional(CNN(), input_shape=ds.input_shape, key=jax.random.key(0))
linen_masks = js.prune(js.scores.magnitude(fn.params), js.ones_like(fn.params),
                       sparsity=0.8, allocation="erk")
print(js.report(linen_masks))

# %%
tx = js.masked(optax.adam(1e-3))
state = js.train.init_state(fn.params, tx, key=jax.random.key(1), masks=linen_masks)
result = js.train.fit(fn.apply_fn, tx, state, ds, num_steps=STEPS, batch_size=BATCH,
                      eval_every=max(STEPS // 5, 1))
print("history keys:", sorted(result.history))
print("early stop:", {k: round(float(v), 4) for k, v in result.early_stop.items()})

# %% [markdown]
# ## 3. Plots

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
axes[0].plot(nnx_losses)
axes[0].set(title="NNX MLP, 90% sparse: train loss", xlabel="iteration", yscale="log")
h = result.history
axes[1].plot(h["step"], h["val_accuracy"], marker="o", label="val")
axes[1].plot(h["step"], h["test_accuracy"], marker="s", label="test")
axes[1].set(title="Linen CNN, 80% sparse (ERK)", xlabel="iteration", ylabel="accuracy")
axes[1].legend()
rows = js.report(linen_masks).rows
axes[2].bar([r.path for r in rows], [r.density for r in rows])
axes[2].set(title="ERK: density (fraction kept) per layer", ylim=(0, 1))
axes[2].tick_params(axis="x", rotation=30)
plt.tight_layout()
plt.show()
