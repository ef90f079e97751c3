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
# # Sweeps on a TPU: one population, sharded over every core
#
# `jaxsparse.population` trains a **population** of models (seeds x sparsity targets here; learning
# rates, rewind points, criteria, ... work the same way) as ONE vmapped, jit-compiled program
# whose member axis is laid out over all devices: the 8 cores of a Colab TPU v2-8 / v3-8,
# every GPU, or, on a CPU, 8 faked CPU devices (`--xla_force_host_platform_device_count=8`,
# set in the first cell before jax is imported), which runs the very same sharded program.
#
# Each member: LeNet-300-100 initialised from its seed, pruned at initialisation by
# magnitude to its own sparsity target (a *traced* per-member value: the whole grid compiles
# once), trained with `js.masked(adam)`. Data: scikit-learn's bundled 8x8 digits (offline).
# On a CPU, or with `JAXSPARSE_SMOKE=1`, a small "smoke" size runs in seconds.

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

# On a machine without an accelerator, fake 8 CPU devices so the sharding below is the same
# program a TPU v2-8 / v3-8 runs. XLA reads this flag once, when jax is first imported.
def has_accelerator() -> bool:
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    import glob
    import shutil

    return bool(glob.glob("/dev/accel*") or os.path.exists("/dev/nvidia0")
                or shutil.which("nvidia-smi"))


if not has_accelerator() and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""):
    if "jax" in sys.modules:
        print("jax is already imported: restart the runtime for 8 faked CPU devices")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

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
import jaxsparse.population
import jaxsparse.train

DEVICES = jax.device_count()
print(f"{DEVICES} devices:", ", ".join(f"{d.platform}:{d.id}" for d in jax.devices()))
mesh = js.population.make_mesh()  # a 1-d mesh named "population" over every device
print("mesh:", dict(mesh.shape))

if SMOKE:
    SPARSITIES, SEEDS, STEPS, EVAL_EVERY = [0.0, 0.5, 0.8, 0.9], [0, 1], 100, 50
else:  # 8 x 4 = 32 members: 4 per core of a v2-8 / v3-8
    SPARSITIES = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
    SEEDS, STEPS, EVAL_EVERY = [0, 1, 2, 3], 2000, 200

members = js.population.grid(sparsity=SPARSITIES, seed=SEEDS)
hp = js.population.stack_configs(members)  # {"sparsity": f32[P], "seed": i32[P]}, traced
print(f"population: {len(members)} members ({len(SPARSITIES)} sparsities x {len(SEEDS)} "
      f"seeds), {len(members) / DEVICES:g} per device")

# %% [markdown]
# ## Build the population
#
# `init_population` vmaps the model's `init_fn` over one key per member;
# `population_map(fn)` runs a per-member function over the population: `jit(vmap(fn))` with
# the member axis sharded over the mesh (populations that do not divide the device count are
# padded and the padding dropped). `in_axes=None` marks arguments shared by every member.

# %%
ds = js.data.digits()
fn = js.models.functional(js.models.lenet300(key=jax.random.key(0),
                                             input_shape=ds.input_shape,
                                             num_classes=ds.num_classes))
tx = js.masked(optax.adam(1.2e-3))


def new_member(params, sparsity, key):
    """One member: magnitude pruning at init to its own sparsity, then a train state."""
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=sparsity)
    return js.train.init_state(params, tx, key=key, masks=masks)


keys = js.population.member_keys(hp["seed"])
params, _ = js.population.init_population(fn.init_fn, keys)
states = js.population.population_map(new_member, mesh=mesh)(params, hp["sparsity"], keys)
print("density (fraction kept) per member:",
      np.round(np.asarray(jax.vmap(js.density)(states.masks)), 3))

kernel = states.params["fc0"]["kernel"]
print("fc0 kernel of the population:", kernel.shape, "|", kernel.sharding)
for shard in kernel.addressable_shards[:4]:
    rows = shard.index[0]  # the slice of the member axis this device holds
    print(f"  {shard.device}: members {rows.start}..{rows.stop - 1}")

# %% [markdown]
# ## Train: one compiled program for the whole grid
#
# The one trainer, `js.train.Trainer`, trains a single model or, given a stacked state like
# this one, the whole population: each chunk of `EVAL_EVERY` steps is ONE compiled program
# over every member, laid out over the mesh (`population_map` inside; the data is shared),
# and every evaluation likewise. `result.history[metric]` holds one list of per-member
# values per evaluation.

# %%
trainer = js.train.Trainer(fn.apply_fn, tx, batch_size=60, mesh=mesh)
t0 = time.time()


def show(step, record):
    print(f"step {step:5d}: mean test accuracy {np.mean(record['test_accuracy']):.4f} "
          f"({time.time() - t0:.1f}s)")


result = trainer.fit(states, ds, num_steps=STEPS, eval_every=EVAL_EVERY, callback=show)
states, history = result.state, result.history
print(f"{len(members)} members x {STEPS} steps on {DEVICES} {ACCELERATOR} devices: "
      f"{time.time() - t0:.1f}s (compilation included)")

pruned_nonzero = int(jnp.sum(jnp.where(states.masks["fc0"]["kernel"], 0.0,
                                       states.params["fc0"]["kernel"]) != 0))
print("pruned weights that became nonzero during training:", pruned_nonzero)

# %% [markdown]
# ## Results

# %%
final = np.asarray(history["test_accuracy"][-1]).reshape(len(SPARSITIES), len(SEEDS))
curves = np.asarray(history["test_accuracy"])  # [evaluations, members]
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
density = 1 - np.asarray(SPARSITIES)
axes[0].errorbar(100 * density, final.mean(1), yerr=final.std(1, ddof=1), marker="o",
                 capsize=3)
axes[0].set(xscale="log", xlabel="percent of weights remaining",
            ylabel="final test accuracy (± sample std over seeds)",
            title=f"{len(members)} members on {DEVICES} {ACCELERATOR} devices")
axes[0].minorticks_off()
axes[0].set_xticks(100 * density, [f"{100 * d:.3g}" for d in density])
axes[0].invert_xaxis()
for i, s in enumerate(SPARSITIES):
    axes[1].plot(history["step"], curves[:, i * len(SEEDS):(i + 1) * len(SEEDS)].mean(1),
                 label=f"sparsity {s:g}")
axes[1].set(xlabel="iteration", ylabel="test accuracy (mean over seeds)",
            title="learning curves")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()
