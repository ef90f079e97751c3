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
# Here each IMP level trains the tickets and their random re-initialisation controls (several
# replicates) as **one vmapped population** on the accelerator, with `jaxsparse.train`'s
# compiled-scan chunks and `jaxsparse.lottery.prune_and_rewind`.
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
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxsparse as js
import jaxsparse.data
import jaxsparse.models
import jaxsparse.train

if SMOKE:  # seconds on a laptop CPU: digits, 3 levels, fast pruning so the levels spread out
    LEVELS, ITERATIONS, EVAL_EVERY, REPLICATES = 3, 100, 50, 1
    RATES = [("head", 0.2), (".*", 0.5)]  # fraction of the *remaining* weights pruned per level
else:  # the paper's rates; 15 levels reach 3.5% of the hidden weights
    LEVELS, ITERATIONS, EVAL_EVERY, REPLICATES = 15, 5000, 500, 2
    RATES = [("head", 0.1), (".*", 0.2)]
BATCH, LEARNING_RATE = 60, 1.2e-3  # the paper's Adam settings for LeNet-300-100

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
x_train, y_train = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
x_val, y_val = jnp.asarray(ds.val.x), jnp.asarray(ds.val.y)
x_test, y_test = jnp.asarray(ds.test.x), jnp.asarray(ds.test.y)

# %% [markdown]
# ## Model, optimizer, compiled population training
#
# `js.models.functional` turns the NNX LeNet-300-100 into pure functions on dicts;
# `init_fn` is the paper's Glorot-normal initialisation, vmappable over keys.
# A population member is one `TrainState`; `jax.vmap` over the leading axis trains them all
# in one compiled `lax.scan` per evaluation interval.

# %%
fn = js.models.functional(js.models.lenet300(key=jax.random.key(0),
                                             input_shape=ds.input_shape,
                                             num_classes=ds.num_classes))
tx = optax.adam(LEARNING_RATE)
chunk = jax.jit(jax.vmap(js.train.make_train_chunk(fn.apply_fn, tx, batch_size=BATCH,
                                                   num_steps=EVAL_EVERY),
                         in_axes=(0, None, None)))
evaluate = jax.jit(jax.vmap(js.train.make_eval(fn.apply_fn), in_axes=(0, 0, 0, None, None)))
new_states = jax.jit(jax.vmap(lambda p, m, k: js.train.init_state(p, tx, key=k, masks=m)))


def train_population(params, masks, key):
    """Trains every member; returns final params and test accuracy at the early-stop point."""
    states = new_states(params, masks, jax.random.split(key, len(jax.tree.leaves(masks)[0])))
    val_losses, test_accs, steps = [], [], []
    for step in range(0, ITERATIONS + 1, EVAL_EVERY):
        if step:
            states, _ = chunk(states, x_train, y_train)
        val = evaluate(states.params, states.model_state, states.masks, x_val, y_val)
        test = evaluate(states.params, states.model_state, states.masks, x_test, y_test)
        val_losses.append(np.asarray(val["loss"]))
        test_accs.append(np.asarray(test["accuracy"]))
        steps.append(step)
    best = np.argmin(np.stack(val_losses), axis=0)  # early stop: minimum validation loss
    members = np.arange(len(best))
    return (states.params, np.stack(test_accs)[best, members], np.asarray(steps)[best],
            np.stack(test_accs))


# %% [markdown]
# ## Iterative magnitude pruning
#
# Level 0 trains the dense replicates. Each later level prunes the trained tickets
# (`prune_and_rewind`: 20%/10% of what remains, by magnitude, exact counts) and rewinds the
# survivors to the init; the control gets the same masks with a fresh random init
# (`rewind(..., action="reinit")`). Tickets and controls train together as one population.

# %%
plan = js.lottery.Plan(rates=RATES)
# 2 x REPLICATES dense nets at level 0 (the same population size as every later level, so
# everything compiles once): the first half are the tickets' lineage and their init is the
# rewind point; the second half are more dense replicates.
init_params, _ = jax.vmap(fn.init_fn)(jax.random.split(jax.random.key(1), 2 * REPLICATES))
masks = jax.vmap(js.ones_like)(init_params)
prune_and_rewind = jax.jit(jax.vmap(lambda final, init, m: js.lottery.prune_and_rewind(
    final, init, m, plan=plan)))
reinit = jax.jit(jax.vmap(lambda init, m, k: js.lottery.rewind(
    init, m, action="reinit", key=k, init_fn=lambda kk: fn.init_fn(kk)[0])))


def first_half(tree):
    return jax.tree.map(lambda x: x[:REPLICATES], tree)


def concat(a, b):
    return jax.tree.map(lambda u, v: jnp.concatenate([u, v]), a, b)


t0 = time.time()
params, acc, stop, _ = train_population(init_params, masks, jax.random.key(2))
final_params, init_params, masks = first_half(params), first_half(init_params), first_half(masks)
results = [dict(level=0, remaining=100.0, ticket=acc, reinit=acc, ticket_stop=stop,
                reinit_stop=stop)]  # one row per level; dense: all 2R replicates for both
print(f"level  0: 100.0% remaining | test acc dense {acc.mean():.4f} | {time.time() - t0:.0f}s")
for level in range(1, LEVELS + 1):
    masks, ticket_start = prune_and_rewind(final_params, init_params, masks)
    control_start = reinit(init_params, masks,
                           jax.random.split(jax.random.key(100 + level), REPLICATES))
    population = concat(ticket_start, control_start)
    params, acc, stop, _ = train_population(population, concat(masks, masks),
                                                jax.random.key(2 + level))
    final_params = first_half(params)
    remaining = 100 * float(js.density(jax.tree.map(lambda m: m[0], masks)))
    results.append(dict(level=level, remaining=remaining, ticket=acc[:REPLICATES],
                        reinit=acc[REPLICATES:], ticket_stop=stop[:REPLICATES],
                        reinit_stop=stop[REPLICATES:]))
    print(f"level {level:2d}: {remaining:5.1f}% remaining | test acc ticket "
          f"{acc[:REPLICATES].mean():.4f} reinit {acc[REPLICATES:].mean():.4f} "
          f"| {time.time() - t0:.0f}s")

print(js.report(jax.tree.map(lambda m: m[0], masks)))

# %% [markdown]
# ## Results
#
# Test accuracy at the early-stop iteration (minimum validation loss), mean over replicates
# (error bars: min/max), against the fraction of weights remaining. With few iterations (smoke
# mode, or the small digits set) the validation loss is still falling when training stops,
# so the early-stop iteration sits at the end and the right panel is flat.

# %%
remaining = np.array([r["remaining"] for r in results])
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for name, style in (("ticket", "o-"), ("reinit", "s--")):
    acc = [np.asarray(r[name]) for r in results]  # level 0 has 2R dense replicates
    mean = np.array([a.mean() for a in acc])
    spread = [mean - np.array([a.min() for a in acc]), np.array([a.max() for a in acc]) - mean]
    stop = np.array([np.mean(r[f"{name}_stop"]) for r in results])
    label = "winning ticket (rewind to init)" if name == "ticket" else "random re-init"
    axes[0].errorbar(remaining, mean, yerr=spread, fmt=style, capsize=3, label=label)
    axes[1].plot(remaining, stop, style, label=label)
for ax, ylabel in zip(axes, ("test accuracy at early stop", "early-stop iteration"),
                      strict=True):
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(remaining, [f"{r:.3g}" for r in remaining], rotation=45)
    ax.invert_xaxis()
    ax.set(xlabel="percent of weights remaining", ylabel=ylabel)
    ax.legend()
axes[0].set_title(f"LeNet-300-100 on {ds.name}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Export the sparsest ticket
#
# Masks plus the rewound starting weights (orbax) and the per-layer density report; load it
# back with `js.load_ticket(dir, like=fn.params)`.

# %%
ticket_params = jax.tree.map(lambda p: p[0], ticket_start)
ticket_masks = jax.tree.map(lambda m: m[0], masks)
out = js.export_ticket("tickets/lenet300", ticket_params, ticket_masks,
                       metadata={"dataset": ds.name, "level": LEVELS,
                                 "test_accuracy": float(results[-1]["ticket"][0])})
loaded, loaded_masks = js.load_ticket(out, like=fn.params)
print(out, "| reloaded density", float(js.density(loaded_masks)))
