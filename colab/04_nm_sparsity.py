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
# # 2:4 structured sparsity: hardware-legal masks, SR-STE, compressed export
#
# Sparse tensor cores (NVIDIA Ampere and later) run a 2:4 GEMM only when every group of 4
# consecutive weights **along the reduction (K) dimension** keeps at most 2. For a Flax
# `Dense` kernel `(in, out)` that is the `in` axis; for a conv kernel `(kh, kw, C_in, C_out)`
# it is `C_in` (the im2col K with channels fastest). This notebook:
#
# 1. builds 2:4 masks in that orientation and checks them with `js.is_nm` (per leaf:
#    `js.nm.nm_report`);
# 2. compares dense training, one-shot 2:4 pruning, one-shot + fine-tune (NVIDIA ASP) and
#    SR-STE (Zhou et al. 2021) on a Conv-2 network;
# 3. compresses a kernel (values + 2-bit indices), multiplies with it, and exports it in the
#    CUTLASS / `torch.sparse` semi-structured layout.
#
# Data: scikit-learn's bundled 8x8 digits (offline). On a CPU, or with `JAXSPARSE_SMOKE=1`,
# a small "smoke" size runs in seconds.

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

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxsparse as js
import jaxsparse.data
import jaxsparse.models
import jaxsparse.train

if SMOKE:
    STEPS, EVAL_EVERY, MODEL, LR = 100, 50, dict(width=8, fc=(32, 32)), 2e-3
else:  # Conv-2 at half the paper's width (8x8 inputs), Adam 3e-4
    STEPS, EVAL_EVERY, MODEL, LR = 3000, 300, dict(width=32, fc=(256, 256)), 3e-4
N, M = 2, 4
# The first conv has C_in = 1 (grey images): not a multiple of 4, so it stays dense (as in
# NVIDIA's ASP). Rules are (regex on the leaf path, prunable?), first match wins.
RULES = [("conv0/", False)]

# %% [markdown]
# ## 1. The hardware orientation
#
# `js.reduction_axis` gives the axis the groups of 4 run along, from the kernel's path and
# shape; `js.nm_mask` keeps the 2 largest `|w|` in each group (sort-free, ties to the lower
# index). Below: a Dense kernel `(in=16, out=8)`, its 2:4 mask (groups of 4 rows in each
# column), and a conv kernel's axis.

# %%
w = jax.random.normal(jax.random.key(0), (16, 8))
mask = js.nm_mask(w, N, M)
print("Dense (in, out) kernel: groups along axis", js.reduction_axis("fc/kernel", w.shape))
print("Conv (3, 3, C_in, C_out) kernel: groups along axis",
      js.reduction_axis("conv1/kernel", (3, 3, 16, 32)))
print("kept per group of 4 along `in`:", np.unique(np.asarray(mask).reshape(4, 4, 8).sum(1)))

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(np.abs(np.asarray(w)), cmap="viridis")
axes[0].set(title="|W|  (rows = in, the K dimension)", xlabel="out", ylabel="in")
axes[1].imshow(np.asarray(mask), cmap="gray_r")
axes[1].set(title="2:4 mask (kept = dark)", xlabel="out")
for ax in axes:
    for r in range(M, w.shape[0], M):
        ax.axhline(r - 0.5, color="red", lw=1)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Training recipes on Conv-2
#
# * **dense**: the baseline.
# * **one-shot**: the dense weights pruned to 2:4 by magnitude (`js.nm_masks`), no training.
# * **one-shot + fine-tune** (ASP): those fixed masks, trained again with `js.masked(tx)`.
# * **SR-STE**: from scratch, the forward pass goes through `js.nm.sr_ste(params)`: the 2:4 mask
#   is recomputed from `|w|` every step, gradients pass straight through, plus a decay
#   `lambda_w * (1 - mask) * w` that pushes pruned weights towards zero.

# %%
ds = js.data.digits()
fn = js.models.functional(js.models.conv2(key=jax.random.key(0), input_shape=ds.input_shape,
                                          num_classes=ds.num_classes, **MODEL))
tx = optax.adam(LR)


def fit(apply_fn, state):
    return js.train.fit(apply_fn, tx, state, ds, num_steps=STEPS, batch_size=60,
                        eval_every=EVAL_EVERY)


def test_accuracy(params):
    return js.train.evaluate(fn.apply_fn, params, ds.test.x, ds.test.y)["accuracy"]


results = {}
dense = fit(fn.apply_fn, js.train.init_state(fn.params, tx, key=jax.random.key(1)))
results["dense"] = test_accuracy(dense.state.params)

masks = js.nm_masks(dense.state.params, N, M, rules=RULES)
results["one-shot 2:4"] = test_accuracy(js.apply_masks(dense.state.params, masks))

finetune = fit(fn.apply_fn, js.train.init_state(dense.state.params, js.masked(tx),
                                                key=jax.random.key(2), masks=masks))
results["one-shot + fine-tune"] = test_accuracy(finetune.state.params)


def apply_sr_ste(params, model_state, x, *, train, key):
    return fn.apply_fn(js.nm.sr_ste(params, N, M, rules=RULES), model_state, x, train=train,
                       key=key)


sr = fit(apply_sr_ste, js.train.init_state(fn.params, tx, key=jax.random.key(1)))
sr_masks = js.nm_masks(sr.state.params, N, M, rules=RULES)
sr_params = js.apply_masks(sr.state.params, sr_masks)
results["SR-STE"] = test_accuracy(sr_params)

for name, acc in results.items():
    print(f"{name:<22} test accuracy {acc:.4f}")
print(js.nm.nm_report(sr_params, N, M, rules=RULES))
print(js.report(sr_masks))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
axes[0].bar(list(results), list(results.values()), color=["gray", "C3", "C0", "C2"])
axes[0].set(ylim=(0, 1), ylabel="test accuracy", title=f"Conv-2 on {ds.name}, 2:4 sparse")
for name, run in (("dense", dense), ("one-shot + fine-tune", finetune), ("SR-STE", sr)):
    axes[1].plot(run.history["step"], run.history["val_accuracy"], marker="o", label=name)
axes[1].set(xlabel="iteration", ylabel="validation accuracy", title="learning curves")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Compressed form and export
#
# `js.nm.compress` stores the kept values plus one small index per value, with the reduction
# axis moved last (a Dense `(in, out)` kernel becomes `(out, in)` rows, PyTorch's
# `Linear.weight` layout). `js.nm.nm_matmul` multiplies with it (a reference implementation
# that runs on any backend); `js.nm.decompress` is bit-exact. `js.nm.export_cutlass` writes the
# `(values, meta)` pair of PyTorch's CUTLASS semi-structured format (for a float16 copy:
# the hardware's 2:4 mode is for 16- and 8-bit operands).

# %%
kernel = sr_params["fc0"]["kernel"]
c = js.nm.compress(kernel, N, M, path="fc0/kernel")
mem = js.nm.memory(c)
print(f"fc0 kernel {tuple(kernel.shape)} -> values {tuple(c.values.shape)}, "
      f"indices {tuple(c.indices.shape)} {c.indices.dtype}")
print(f"bytes: dense {mem['dense_bytes']}, compressed {mem['compressed_bytes']} "
      f"({mem['ratio']:.3f}x; with 2-bit indices {mem['ratio_packed']:.3f}x)")
print("decompress is exact:", bool((js.nm.decompress(c) == kernel).all()))

x_fc = jax.random.normal(jax.random.key(3), (32, kernel.shape[0]))
err = float(jnp.abs(js.nm.nm_matmul(x_fc, c) - x_fc @ kernel).max())
print(f"nm_matmul vs dense masked matmul: max abs difference {err:.2e}")

# Sparse tensor cores run 2:4 on 16-bit (and 8-bit) operands; float32 (tf32) is 1:2 there.
values, meta = js.nm.export_cutlass(np.asarray(kernel, np.float16), path="fc0/kernel")
print("CUTLASS layout: values", values.shape, values.dtype, "| meta", meta.shape, meta.dtype)
# Written to a temporary directory (JAXSPARSE_OUT to choose one), never into the cwd.
OUT_DIR = os.environ.get("JAXSPARSE_OUT") or tempfile.mkdtemp(prefix="jaxsparse_nm_")
np.savez(os.path.join(OUT_DIR, "fc0_2to4_cutlass.npz"), values=values, meta=meta)
print("saved", os.path.join(OUT_DIR, "fc0_2to4_cutlass.npz"))
