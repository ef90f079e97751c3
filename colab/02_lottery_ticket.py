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
# # Lottery tickets: iterative magnitude pruning with rewinding
#
# Frankle & Carbin 2019 (ICLR), "The Lottery Ticket Hypothesis": train LeNet-300-100, prune
# 20% of each hidden layer's remaining weights and 10% of the output layer's, **rewind** the
# survivors to their initial values, retrain; repeat. The resulting *winning tickets* train to
# higher accuracy than the dense net down to ~10-20% of the weights, while the same masks with
# a **random re-initialisation** lose accuracy early.
#
# Here `jaxsparse.lottery.imp` runs the whole experiment from the public API: every IMP level
# trains the tickets and their random re-initialisation controls (several replicates) as
# **one population** on the accelerator, with the one trainer (`jaxsparse.train.Trainer`).
#
# Data: MNIST when it can be had (a local copy or a prepared tensorflow-datasets directory,
# else downloaded when online), otherwise scikit-learn's bundled 8x8 digits (offline).
# On a CPU, or with `JAXSPARSE_SMOKE=1`, the notebook runs a small "smoke" size on digits.

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
import time

import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxsparse as js
import jaxsparse.data
import jaxsparse.lottery
import jaxsparse.models

if SMOKE:  # seconds on a laptop CPU: digits, 3 levels, fast pruning so the levels spread out
    LEVELS, ITERATIONS, EVAL_EVERY, REPLICATES = 3, 100, 50, 2
    RATES = [("head", 0.2), (".*", 0.5)]  # fraction of the *remaining* weights pruned per level
else:  # the paper's rates; 15 levels reach 3.5% of the hidden weights
    LEVELS, ITERATIONS, EVAL_EVERY, REPLICATES = 15, 5000, 500, 2
    RATES = [("head", 0.1), (".*", 0.2)]
BATCH, LEARNING_RATE = 60, 1.2e-3  # the paper's Adam settings for LeNet-300-100
# Everything this notebook writes (checkpoints, the exported ticket) goes here.
OUT_DIR = os.environ.get("JAXSPARSE_OUT") or tempfile.mkdtemp(prefix="jaxsparse_lottery_")
print("outputs under", OUT_DIR)

# %% [markdown]
# ## Data
#
# `js.data.load("mnist")` reads local raw IDX files or a prepared tensorflow-datasets
# directory and never downloads. When it finds nothing and the runtime is online, the cell
# below first asks tensorflow-datasets to prepare MNIST (`array_record` format, readable
# without TensorFlow), then falls back to the four raw IDX files from the mirror tfds uses;
# offline (or in smoke mode) it uses the bundled digits.

# %%
MNIST_DIR = os.path.expanduser("~/jaxsparse_data/mnist")
MNIST_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"


def fetch_mnist() -> None:
    """Tries to make MNIST available locally: tfds first, then the raw IDX files."""
    try:
        import tensorflow_datasets as tfds

        tfds.builder("mnist", file_format="array_record").download_and_prepare()
        return
    except Exception as e:  # noqa: BLE001 - any failure just means "try the next source"
        print("tensorflow-datasets could not prepare mnist:", type(e).__name__, str(e)[:200])
    import urllib.request

    os.makedirs(MNIST_DIR, exist_ok=True)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        if not os.path.exists(os.path.join(MNIST_DIR, f)):
            urllib.request.urlretrieve(MNIST_MIRROR + f, os.path.join(MNIST_DIR, f))


def get_data():
    if SMOKE:
        return js.data.digits()
    for attempt in range(2):
        try:
            return js.data.load("mnist", data_dir=MNIST_DIR if os.path.isdir(MNIST_DIR)
                                else None)
        except FileNotFoundError:
            if attempt == 0:
                try:
                    fetch_mnist()
                except Exception as e:  # noqa: BLE001 - offline: use the bundled digits
                    print("MNIST unavailable (offline?):", type(e).__name__, str(e)[:200])
                    break
    return js.data.digits()


ds = get_data()
print(f"{ds.name}: train {ds.train.x.shape}, val {len(ds.val.y)}, test {len(ds.test.y)}")

# %% [markdown]
# ## The experiment: `js.lottery.imp`
#
# The library's IMP loop runs levels x replicates x branches on the one trainer
# (`js.train.Trainer`): level 0 trains the dense replicates; each later level prunes the
# trained weights by `plan` (20%/10% of what remains, by magnitude, exact counts) and rewinds
# the survivors to their initial values. At every level the **random re-initialisation**
# control (`reinit_control()`: the same masks, a fresh init) trains from the same level. The
# replicates are ONE population: every training chunk is one compiled program over all of
# them, sharded over the devices. With `directory=` every run is checkpointed: rerunning the
# cell resumes where it stopped.
#
# `js.models.functional` turns the NNX LeNet-300-100 into pure functions on dicts; `init_fn`
# is the paper's Glorot-normal initialisation, vmappable over keys.

# %%
fn = js.models.functional(js.models.lenet300(key=jax.random.key(0),
                                             input_shape=ds.input_shape,
                                             num_classes=ds.num_classes))
tickets = {}  # level -> (starting weights, masks) of every replicate's ticket


def keep_ticket(level, params, masks, model_state):
    tickets[level] = (params, masks)  # (LeNet has no batch-norm statistics to keep)


t0 = time.time()
results = js.lottery.imp(
    fn.apply_fn, fn.init_fn, ds, plan=js.lottery.Plan(rates=RATES), levels=LEVELS,
    tx=js.masked(optax.adam(LEARNING_RATE)), num_steps=ITERATIONS, batch_size=BATCH,
    eval_every=EVAL_EVERY, key=jax.random.key(1), replicates=REPLICATES,
    branches=[js.lottery.reinit_control()], directory=os.path.join(OUT_DIR, "imp"),
    on_level=keep_ticket,
    on_result=lambda r: print(f"level {r['level']:2d} {r['branch']:>7s}: "
                              f"{100 * np.mean(r['density']):5.1f}% remaining | test acc at "
                              f"early stop {np.mean(r['early_stop_test_accuracy']):.4f} | "
                              f"{time.time() - t0:.0f}s"))
print(js.report(jax.tree.map(lambda m: m[0], tickets[LEVELS][1])))

# %% [markdown]
# ## Results
#
# Test accuracy at the early-stop iteration (minimum validation loss), mean over replicates
# (error bars: sample standard deviation), against the fraction of weights remaining; the
# dense level is shared by both lines. With few iterations (smoke mode, or the small digits
# set) the validation loss is still falling when training stops, so the early-stop iteration
# sits at the end (open markers: at the step cap) and the right panel is flat.

# %%
def series(name, key):
    rows = [r for r in results if r["branch"] in (name, "ticket") and
            (r["branch"] == name or r["level"] == 0)]
    rows = sorted(rows, key=lambda r: r["level"])
    x = np.array([100 * np.mean(r["density"]) for r in rows])
    v = [np.asarray(r[key], np.float64) for r in rows]
    sd = np.array([a.std(ddof=1) if a.size > 1 else 0.0 for a in v])
    return x, np.array([a.mean() for a in v]), sd


cap = ITERATIONS  # an early stop at the last evaluation: the validation loss still fell
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for name, style in (("ticket", "o-"), ("reinit", "s--")):
    label = "winning ticket (rewind to init)" if name == "ticket" else "random re-init"
    x, mean, sd = series(name, "early_stop_test_accuracy")
    axes[0].errorbar(x, mean, yerr=sd, fmt=style, capsize=3, label=label)
    x, stop, _ = series(name, "early_stop_step")
    axes[1].plot(x, stop, style, label=label)
    axes[1].plot(x[stop >= cap], stop[stop >= cap], "o", mfc="none", ms=11, color="gray")
axes[1].axhline(cap, color="gray", ls=":", lw=0.8, label=f"step cap ({cap})")
for ax, ylabel in zip(axes, ("test accuracy at early stop (± sample std)",
                             "early-stop iteration"), strict=True):
    ticks = sorted({100 * np.mean(r["density"]) for r in results}, reverse=True)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks], rotation=45)
    ax.invert_xaxis()
    ax.set(xlabel="percent of weights remaining", ylabel=ylabel)
    ax.legend()
axes[0].set_title(f"LeNet-300-100 on {ds.name}, {REPLICATES} replicates")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Export the sparsest ticket
#
# Masks plus the rewound starting weights (orbax) and the per-layer density report; load it
# back with `js.load_ticket(dir, like=fn.params)`.

# %%
ticket_params = jax.tree.map(lambda p: p[0], tickets[LEVELS][0])
ticket_masks = jax.tree.map(lambda m: m[0], tickets[LEVELS][1])
last = [r for r in results if r["level"] == LEVELS and r["branch"] == "ticket"][0]
out = js.export_ticket(os.path.join(OUT_DIR, "tickets", "lenet300"), ticket_params,
                       ticket_masks,
                       metadata={"dataset": ds.name, "level": LEVELS,
                                 "test_accuracy": float(last["early_stop_test_accuracy"][0])})
loaded, loaded_masks = js.load_ticket(out, like=fn.params)
print(out, "| reloaded density", float(js.density(loaded_masks)))
