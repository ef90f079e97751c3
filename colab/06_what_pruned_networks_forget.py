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
# # What pruned networks forget: PIEs, the null, class disparity, VoG, forgetting events
#
# Hooker et al. 2019 ("What do compressed deep neural networks forget?") train a population
# of models per sparsity level and call an example a **Pruning Identified Exemplar (PIE)**
# when the modal label of the pruned population differs from that of the dense one. Pruned
# models lose accuracy disproportionately on PIEs: the long tail goes first.
#
# Populations are finite, so two *dense* populations disagree on some examples too. This
# notebook trains each sparsity level as **one population program** (`jaxsparse.train`
# with gradual magnitude pruning), records every member's predictions in a Parquet record,
# and asks `jaxsparse.forgetting`:
#
# * how many PIEs there are, and how many a second dense population would "find" by chance
#   (the dense-vs-dense null), with intervals;
# * which classes pruning hurts (Welch's t-test per class, Benjamini–Hochberg corrected);
# * whether PIEs are the examples with a high Variance of Gradients, and whether the
#   training labels we corrupt on purpose show up among the training-set PIEs;
# * what int8 weight quantisation changes (Compression Identified Exemplars).
#
# Data: scikit-learn's bundled 8x8 digits (offline). On a CPU, or with
# `JAXSPARSE_SMOKE=1`, the notebook runs a small "smoke" size.

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
                    "/tmp/jaxsparse-constraints.txt", f"jaxsparse[experiments] @ {src}",
                    "pyarrow", "scipy"], check=True)


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

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxsparse as js
import jaxsparse.data
import jaxsparse.forgetting as fg
import jaxsparse.models
import jaxsparse.train
from jaxsparse.forgetting import records
from jaxsparse.pruners import gmp

if SMOKE:  # seconds on a laptop CPU
    MEMBERS, SPARSITIES, STEPS, SNAPSHOT_EVERY, DRAWS = 4, (0.0, 0.9), 240, 40, 200
else:  # the paper's population size
    MEMBERS, SPARSITIES, STEPS, SNAPSHOT_EVERY, DRAWS = 30, (0.0, 0.5, 0.9, 0.95), 1500, 150, 1000
BATCH, LEARNING_RATE, LABEL_NOISE = 60, 1.2e-3, 0.1
SCORE_STEP = STEPS // 25  # EL2N / GraNd a few epochs in

# %% [markdown]
# ## Data, with 10% of the training labels corrupted
#
# The noisy subset is fixed and known, so we can later ask whether the training-set PIEs
# over-index on it. The held-out "test" examples are `digits()`'s val and test splits
# together (600 images; nothing here early-stops).

# %%
ds = js.data.digits()
x_train, y_clean = ds.train.x, ds.train.y
x_test = np.concatenate([ds.val.x, ds.test.x])
y_test = np.concatenate([ds.val.y, ds.test.y])
rng = np.random.default_rng(0)
noisy = np.zeros(len(y_clean), bool)
noisy[rng.choice(len(y_clean), int(LABEL_NOISE * len(y_clean)), replace=False)] = True
y_train = y_clean.copy()
y_train[noisy] = (y_clean[noisy] + rng.integers(1, 10, noisy.sum())) % 10
print(f"train {x_train.shape} ({noisy.sum()} noisy labels), test {x_test.shape}")

# %% [markdown]
# ## One population program per sparsity level
#
# Each level is a stacked `TrainState` of `MEMBERS` LeNet-300-100s (different seeds at every
# level: independent populations) trained by **one** `Trainer.fit` with gradual magnitude
# pruning (Zhu & Gupta's cubic schedule) and two hooks that run inside the compiled step:
# `forgetting_events` (correct → incorrect transitions of every training example, on device)
# and `param_snapshots` (the checkpoints VoG needs).

# %%
fn = js.models.functional(js.models.lenet300(key=jax.random.key(0), input_shape=ds.input_shape))
tx = optax.adam(LEARNING_RATE)
snap_steps = sorted({SCORE_STEP, *range(SNAPSHOT_EVERY, STEPS + 1, SNAPSHOT_EVERY)})
vog_steps = [s for s in snap_steps if s % SNAPSHOT_EVERY == 0]
data = {"train": (x_train, y_train), "test": (x_test, y_test)}


def train_level(sparsity: float, level: int):
    pruner = None if sparsity == 0 else gmp(
        final_sparsity=sparsity, begin_step=STEPS // 10, end_step=(6 * STEPS) // 10,
        frequency=max(1, STEPS // 30), allocation="uniform")
    hooks = (fg.forgetting_events(len(y_train)), fg.param_snapshots(snap_steps))
    trainer = js.train.Trainer(fn.apply_fn, tx, batch_size=BATCH, hooks=hooks, pruner=pruner)

    def member(seed):
        key = jax.random.key(seed)
        params, model_state = fn.init_fn(jax.random.fold_in(key, 0))
        return trainer.init_state(params, key=jax.random.fold_in(key, 1),
                                  model_state=model_state)

    seeds = 1000 * level + np.arange(MEMBERS)
    state = jax.vmap(member)(jnp.asarray(seeds, jnp.uint32))
    return trainer.fit(state, data, num_steps=STEPS, eval_every=STEPS // 4).state, seeds


logits_of = jax.jit(jax.vmap(lambda p, x: fn.apply_fn(p, {}, x, train=False,
                                                      key=jax.random.key(0))[0],
                             in_axes=(0, None)))
states, pops, pops_train = {}, {}, {}
record_dir = tempfile.mkdtemp(prefix="pie_record_")
for level, s in enumerate(SPARSITIES):
    t0 = time.time()
    state, seeds = train_level(s, level)
    name = "dense" if s == 0 else f"sparsity={s:g}"
    states[name] = state
    pops[name] = fg.population(name, labels=y_test, logits=logits_of(state.params, x_test),
                               seeds=seeds, split="test", checkpoint=STEPS)
    pops_train[name] = fg.population(name, labels=y_train, seeds=seeds, split="train",
                                     logits=logits_of(state.params, x_train), checkpoint=STEPS)
    records.write_part(record_dir, f"level_{level:02d}",
                       [records.to_table(pops[name], sparsity=s),
                        records.to_table(pops_train[name], sparsity=s)])
    density = float(jnp.mean(jax.vmap(js.density)(state.masks)))
    print(f"{name:>13}: test top-1 {100 * float(pops[name].accuracy.mean()):.2f}% "
          f"± {100 * float(pops[name].accuracy.std()):.2f} (density {density:.3f}) "
          f"[{time.time() - t0:.0f}s]")

# %% [markdown]
# ## The per-example record
#
# One Parquet part per level (written atomically, so a killed run leaves no half part): a
# row per (member, example) with the label, the prediction and the logits. Any Parquet
# reader opens it; `records.load` gives the populations back, bitwise.

# %%
print(records.index(record_dir))
back = records.load(record_dir, "dense", split="test")
assert np.array_equal(np.asarray(back.values), np.asarray(pops["dense"].values))
print(records.read(record_dir).slice(0, 3).to_pylist())

# %% [markdown]
# ## PIEs against the dense-vs-dense null
#
# `pie` compares all members of a level with all dense members (the paper's statistic).
# `pie_null` draws two disjoint halves A and B of the dense population and half as many
# pruned members, many times: the null is the share of examples whose A and B modes differ,
# the excess is the PIE share minus it (paired draws), with a 95% interval.

# %%
dense = pops["dense"]
rows = []
for i, (name, pop) in enumerate(pops.items()):
    if name == "dense":
        continue
    p = fg.pie(dense, pop)
    draws = fg.pie_null(dense, pop, key=jax.random.key(i), num_draws=DRAWS).summary()
    rows.append(dict(name=name, sparsity=SPARSITIES[i], size=draws["size"], pie_all=100 * p.share,
                     **{k: 100 * v for k, v in draws.items() if k not in ("size", "draws")}))
    print(f"{name}: PIE {100 * p.share:.2f}% ({int(p.mask.sum())} examples; "
          f"{int(p.dense_right.sum())} the dense mode got right, {int(p.pruned_right.sum())} "
          f"the pruned mode got right) | at {draws['size']} vs {draws['size']} members: PIE "
          f"{100 * draws['pie']:.2f}%, null {100 * draws['null']:.2f}%, excess "
          f"{100 * draws['excess']:+.2f}% [{100 * draws['excess_lo']:+.2f}, "
          f"{100 * draws['excess_hi']:+.2f}]")
    acc = {who: [float(np.nanmean(fg.subset_accuracy(q, m))) for m in (p.mask, ~p.mask)]
           for who, q in (("dense", dense), ("pruned", pop))}
    print(f"   accuracy on PIEs / the rest: dense {acc['dense'][0]:.3f} / {acc['dense'][1]:.3f}"
          f", pruned {acc['pruned'][0]:.3f} / {acc['pruned'][1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.8))
s = [r["sparsity"] for r in rows]
m = rows[0]["size"]
ax.plot(s, [r["pie_all"] for r in rows], "s:", label=f"PIE share, {MEMBERS} vs {MEMBERS}")
ax.errorbar(s, [r["pie"] for r in rows], yerr=[[r["pie"] - r["pie_lo"] for r in rows],
                                               [r["pie_hi"] - r["pie"] for r in rows]],
            fmt="o-", capsize=3, label=f"PIE share, {m} vs {m} (95% interval)")
ax.plot(s, [r["null"] for r in rows], "k--", label=f"dense-vs-dense null, {m} vs {m}")
ax.fill_between(s, [r["null_lo"] for r in rows], [r["null_hi"] for r in rows], color="gray",
                alpha=0.3)
ax.set(xlabel="sparsity", ylabel="% of test examples", title="PIEs vs the null")
ax.legend()
plt.show()

# %% [markdown]
# ## A gallery of PIEs at the highest sparsity
#
# Title: the label, the dense modal label and the pruned modal label (red: the dense mode was
# right and pruning lost it).

# %%
top = list(pops)[-1]
p = fg.pie(dense, pops[top])
idx = np.flatnonzero(np.asarray(p.mask))[:16]
fig, axes = plt.subplots(2, 8, figsize=(11, 3.2))
for a in axes.ravel():
    a.axis("off")
for a, i in zip(axes.ravel(), idx, strict=False):
    a.imshow(x_test[i][..., 0], cmap="gray_r")
    a.set_title(f"y={y_test[i]} d={int(p.dense_mode[i])} p={int(p.pruned_mode[i])}",
                fontsize=8, color="C3" if bool(p.dense_right[i]) else "k")
plt.suptitle(f"PIEs at {top}")
plt.show()

# %% [markdown]
# ## Which classes pay? Welch's t-test per class, Benjamini–Hochberg corrected
#
# Per member: class recall minus the population's mean accuracy. A negative difference is a
# class that loses more than the average; the original work tests each class at p ≤ 0.05
# without a correction, here the p-values are also adjusted for the 10 tests.

# %%
disp = fg.class_disparity(dense, pops[top])
for c in range(10):
    print(f"class {c}: centred recall change {100 * disp.difference[c]:+6.2f} pp, "
          f"p {disp.p[c]:.3g}, BH-adjusted {disp.p_adjusted[c]:.3g}"
          f"{'  *' if disp.significant[c] else ''}")
plt.figure(figsize=(6, 3))
plt.bar(np.arange(10), 100 * disp.difference,
        color=["C3" if sig else "C0" for sig in disp.significant])
plt.axhline(0, color="k", lw=0.8)
plt.xticks(range(10))
plt.xlabel("class")
plt.ylabel("pp")
plt.title(f"{top}: per-class change (red: BH-adjusted p ≤ 0.05)")
plt.show()

# %% [markdown]
# ## Variance of Gradients, forgetting events, noisy labels
#
# VoG: the spread over checkpoints of the input gradient of the true-class logit,
# class-normalised; error grows with it. On the training set, the injected noisy labels are
# forgotten more often and are over-represented among the training-set PIEs.

# %%
dense_state = states["dense"]
snaps = dense_state.hook_state[1]
vog_idx = jnp.asarray([snap_steps.index(s) for s in vog_steps])
grads_of = jax.jit(jax.vmap(jax.vmap(
    lambda p: fg.input_gradients(fn.apply_fn, p, x_test, y_test)), in_axes=0))
grads = grads_of(jax.tree.map(lambda s: s[:, vog_idx], snaps))  # [members, K, N, 8, 8, 1]
vog = np.asarray(jax.vmap(fg.vog)(grads)).mean(0)
score = np.asarray(fg.class_normalise(vog, y_test, num_classes=10))
decile = np.clip((np.argsort(np.argsort(score)) * 10) // len(score), 0, 9)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for name, pop in pops.items():
    err = 1 - np.asarray(pop.correct, np.float64).mean(0)
    axes[0].plot(range(1, 11), [100 * err[decile == k].mean() for k in range(10)], "o-",
                 label=name)
axes[0].set(xlabel="VoG decile (dense, class-normalised)", ylabel="test error (%)")
axes[0].legend()

ev = fg.forgetting_summary(dense_state.hook_state[0])
events = np.asarray(ev.events, np.float64).mean(0)
p_tr = fg.pie(pops_train["dense"], pops_train[top])
axes[1].hist([events[~noisy], events[noisy]], bins=15, label=["clean", "noisy"], density=True)
axes[1].set(xlabel="forgetting events (dense, mean over members)", ylabel="density")
axes[1].legend()
plt.show()
share = float(noisy[np.asarray(p_tr.mask)].mean()) if p_tr.mask.any() else float("nan")
print(f"train PIEs at {top}: {int(p_tr.mask.sum())} examples, {100 * share:.1f}% of them noisy "
      f"(noisy labels are {100 * noisy.mean():.0f}% of the training set)")
print(f"never learned (dense, any member): {int(np.asarray(ev.never_learned).any(0).sum())}, "
      f"unforgettable for every member: {int(np.asarray(ev.unforgettable).all(0).sum())}")

el2n = np.asarray(fg.el2n(logits_of(jax.tree.map(lambda s: s[:, snap_steps.index(SCORE_STEP)],
                                                 snaps), x_train), y_train)).mean(0)
print(f"EL2N at step {SCORE_STEP}: noisy {el2n[noisy].mean():.3f} vs clean "
      f"{el2n[~noisy].mean():.3f}")

# %% [markdown]
# ## Compression identified exemplars: int8 weights
#
# The dense members fake-quantised to int8 (per-tensor symmetric) form a compressed
# population; modal CIEs are its PIEs, taxicab CIEs the top decile of the L1 distance
# between the two populations' label histograms. Member k of the int8 population IS dense
# member k quantised, so its null draws are paired.

# %%
q_params = jax.vmap(fg.quantize_int8)(dense_state.params)
int8 = fg.population("int8", labels=y_test, logits=logits_of(q_params, x_test),
                     seeds=dense.seeds)
cie = fg.modal_cie(dense, int8)
dist, tax = fg.taxicab(dense, int8)
draws = fg.pie_null(dense, int8, key=jax.random.key(99), num_draws=DRAWS, paired=True).summary()
print(f"int8: top-1 {100 * float(int8.accuracy.mean()):.2f}%, modal CIEs {int(cie.mask.sum())}, "
      f"taxicab CIEs {int(tax.sum())} (mean distance {float(dist.mean()):.4f}), excess over "
      f"the null {100 * draws['excess']:+.2f}% [{100 * draws['excess_lo']:+.2f}, "
      f"{100 * draws['excess_hi']:+.2f}]")
