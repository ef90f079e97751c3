"""What pruned networks forget: PIE populations per sparsity level, the null, CIE, disparity, VoG.

    python -m experiments.forgetting \\
        --config experiments/configs/forgetting/hooker2019_pie_digits.py
    python -m experiments.forgetting \\
        --config experiments/configs/forgetting/hooker2019_pie_mnist.py \\
        --data-file /path/to/mnist_subset_6k.npz
    python -m experiments.forgetting --config ... --set members=10 --analyse-only

For every sparsity level, ``members`` models train as ONE population program
(``jaxsparse.train.Trainer.fit`` on a stacked state, sharded over the devices) with gradual
magnitude pruning (``jaxsparse.pruners.gmp``) and two hooks inside the compiled step: the
forgetting-event counter and parameter snapshots (``jaxsparse.forgetting``). After a level
trains, its members' predictions (test split at every snapshot, train split at the end) are
appended to the per-example Parquet record (``record/level_sXXXX.parquet``), and VoG,
forgetting events and (dense level) EL2N / GraNd go to ``level_sXXXX/stats.npz``. The dense
population fake-quantised to int8 is recorded as a compression variant. A relaunch skips
finished levels (``level_sXXXX/done.json``) and resumes a killed one from its checkpoints.

The analysis reads the record back: per level, top-1 mean ± sd, the PIE share (all members
vs all dense members, the paper's statistic), the PIE share and the dense-vs-dense null at
half the population (``jaxsparse.forgetting.pie_null``) with the excess and its interval,
accuracy on PIEs vs the rest for both populations, classes whose Welch test survives
Benjamini-Hochberg, taxicab CIEs, and on the training split the share of the injected noisy
labels among train PIEs. Output in ``<out>/<name>-<hash>/``: ``table.txt``, ``table.csv``,
``results.json``, ``record/``, and ``pie_gallery.png``, ``pie_share.png``,
``class_disparity.png``, ``vog_deciles.png``. The hash covers every hyperparameter except the
list of sparsities (adding a level extends a run) and where the data lives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

from experiments import cli, common

HASH_EXCLUDE = (*common.NON_HASHED, "data_file", "sparsities")


def variant_name(sparsity: float) -> str:
    """The record's ``variant`` of a level: ``"dense"`` or ``"sparsity=0.9"``."""
    return "dense" if sparsity == 0 else f"sparsity={sparsity:g}"


def level_id(sparsity: float) -> str:
    """``level_s0900`` for sparsity 0.9: the part and directory name of a level."""
    return f"level_s{int(round(sparsity * 1000)):04d}"


def member_seeds(config: Any, sparsity: float) -> np.ndarray:
    """Seeds of a level's members: distinct across levels (independent populations)."""
    if config.members > 1000:
        raise ValueError(f"members must be <= 1000, got {config.members}")
    base = int(config.seed) * 10_000_000 + int(round(sparsity * 1000)) * 1000
    return base + np.arange(config.members, dtype=np.int64)


def snapshot_steps(config: Any) -> tuple[list[int], list[int]]:
    """``(all snapshot steps, the VoG checkpoints)``; both include ``num_steps``."""
    every, total = int(config.snapshot_every), int(config.num_steps)
    vog_steps = list(range(every, total + 1, every))
    if not vog_steps or vog_steps[-1] != total:
        vog_steps.append(total)
    return sorted({int(config.score_step), *vog_steps}), vog_steps


# ---------------------------------------------------------------------------------------
# Data


def inject_noise(y: np.ndarray, fraction: float, num_classes: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, noisy mask)``: ``round(fraction * n)`` labels moved to another class."""
    rng = np.random.default_rng(seed)
    n = len(y)
    idx = rng.choice(n, size=int(round(fraction * n)), replace=False)
    noisy = np.zeros(n, bool)
    noisy[idx] = True
    out = y.copy()
    out[idx] = (y[idx] + rng.integers(1, num_classes, len(idx))) % num_classes
    return out, noisy


def load_data(config: Any) -> dict[str, Any]:
    """The config's data (``experiments.common.load_dataset``) as the study's two splits.

    Nothing early-stops, so the validation split joins ``config.merge_val`` (``"test"``: more
    held-out examples; ``"train"``: e.g. 5,000 / 1,000 from a 6,000-example ``data_file``).
    Then ``label_noise`` of the training labels move to a random other class (a fixed subset,
    seeded by ``seed``). Returns numpy arrays, the noisy mask, the dataset and its source.
    """
    ds = common.load_dataset(config)
    x_tr, y_tr, x_te, y_te = ds.train.x, ds.train.y, ds.test.x, ds.test.y
    if config.merge_val == "test":
        x_te, y_te = np.concatenate([ds.val.x, x_te]), np.concatenate([ds.val.y, y_te])
    else:
        x_tr, y_tr = np.concatenate([x_tr, ds.val.x]), np.concatenate([y_tr, ds.val.y])
    y_noisy, noisy = inject_noise(y_tr, float(config.label_noise), ds.num_classes,
                                  int(config.seed) + 1)
    return dict(x_train=x_tr, y_train=y_noisy, y_clean=y_tr, noisy=noisy, x_test=x_te,
                y_test=y_te, num_classes=ds.num_classes, input_shape=tuple(x_tr.shape[1:]),
                source=ds.source, dataset=ds)


def validate(config: Any) -> None:
    """Usage errors (naming the key and value) before any JAX work."""
    from jaxsparse.forgetting import TIE_RULES, records

    cli.check_training(config)
    cli.positive(config, "members", "snapshot_every", "score_step", "prune_frequency",
                 "null_draws")
    if config.members < 2:
        raise cli.UsageError(f"config members={config.members}: the dense-vs-dense null and "
                             "the t-tests need at least 2 members per level")
    s = [float(v) for v in config.sparsities]
    if 0.0 not in s or any(not 0 <= v < 1 for v in s) or len(set(s)) != len(s):
        raise cli.UsageError(f"config sparsities={tuple(config.sparsities)}: need distinct "
                             "values in [0, 1) including 0 (the dense population)")
    if not 0 <= float(config.label_noise) < 1:
        raise cli.UsageError(f"config label_noise={config.label_noise}: must be in [0, 1)")
    if config.num_steps // config.snapshot_every < 6:
        raise cli.UsageError(f"config snapshot_every={config.snapshot_every}: VoG's three "
                             f"windows need >= 6 checkpoints in num_steps={config.num_steps}")
    if config.score_step > config.num_steps:
        raise cli.UsageError(f"config score_step={config.score_step} is after num_steps")
    if not 0 <= config.prune_begin < config.prune_end <= config.num_steps:
        raise cli.UsageError(f"config prune_begin={config.prune_begin}, prune_end="
                             f"{config.prune_end}: need 0 <= begin < end <= num_steps")
    for key, allowed in (("tie", TIE_RULES), ("record_values", records.VALUES),
                         ("record_layout", records.LAYOUTS), ("merge_val", ("test", "train")),
                         ("vog_target", ("logit", "prob")),
                         ("prune_allocation", ("uniform", "erk"))):
        if config[key] not in allowed:
            raise cli.UsageError(f"config {key}={config[key]!r}: expected one of {allowed}")


# ---------------------------------------------------------------------------------------
# One level: train the population, record its predictions and statistics


def _pruner(config: Any, sparsity: float):
    if sparsity == 0:
        return None
    from jaxsparse.pruners import gmp

    return gmp(final_sparsity=float(sparsity), begin_step=int(config.prune_begin),
               end_step=int(config.prune_end), frequency=int(config.prune_frequency),
               allocation=config.prune_allocation)


def train_level(config: Any, d: dict, sparsity: float, level_dir: str, fn, *,
                show_progress: bool = True):
    """Trains the level's population (one program) with GMP and the two hooks; FitResult."""
    import jax
    import jax.numpy as jnp

    from jaxsparse import forgetting, train

    steps, _ = snapshot_steps(config)
    hooks = (forgetting.forgetting_events(len(d["y_train"])), forgetting.param_snapshots(steps))
    pruner = _pruner(config, sparsity)
    tx = common.build_tx(config)
    trainer = train.Trainer(fn.apply_fn, tx, batch_size=int(config.batch_size), hooks=hooks,
                            pruner=pruner)

    def member(seed):
        key = jax.random.key(seed)
        params, model_state = fn.init_fn(jax.random.fold_in(key, 0))
        return trainer.init_state(params, key=jax.random.fold_in(key, 1),
                                  model_state=model_state)

    state = jax.vmap(member)(jnp.asarray(member_seeds(config, sparsity), jnp.uint32))
    data = {"train": (d["x_train"], d["y_train"]), "test": (d["x_test"], d["y_test"])}
    bar, callback = None, None
    if show_progress:
        bar, callback = common.progress(int(config.num_steps),
                                        desc=f"{variant_name(sparsity)} x{config.members}")
    try:
        return trainer.fit(state, data, num_steps=int(config.num_steps),
                           eval_every=int(config.eval_every),
                           checkpoint_every=int(config.checkpoint_every),
                           checkpoint_dir=os.path.join(level_dir, "ckpt"), keep=1,
                           callback=callback)
    finally:
        if bar is not None:
            bar.close()


def _population_fns(fn, config: Any):
    """Per-member programs (logits at every snapshot, VoG, GraNd) via population_map."""
    import jax

    from jaxsparse import forgetting
    from jaxsparse.population import population_map

    key = jax.random.key(0)

    def logits_at(params, model_state, x):
        return fn.apply_fn(params, model_state, x, train=False, key=key)[0]

    def snapshot_logits(snaps, model_state, x):
        return jax.vmap(lambda p: logits_at(p, model_state, x))(snaps)

    def vog_stats(snaps, model_state, x, y):
        grads = jax.vmap(lambda p: forgetting.input_gradients(
            fn.apply_fn, p, x, y, model_state=model_state, target=config.vog_target))(snaps)
        out = forgetting.vog_windows(grads)
        out["all"] = forgetting.vog(grads)
        return out

    def grand(params, model_state, masks, x, y):
        return forgetting.grand(fn.apply_fn, params, x, y, model_state=model_state, masks=masks)

    pm = population_map
    return dict(
        logits=pm(logits_at, in_axes=(0, 0, None)),
        snapshot_logits=pm(snapshot_logits, in_axes=(0, 0, None)),
        vog=pm(vog_stats, in_axes=(0, 0, None, None)),
        grand=pm(grand, in_axes=(0, 0, 0, None, None)),
    )


def record_level(config: Any, d: dict, sparsity: float, state, fns: dict, run: str) -> dict:
    """Writes the level's record part and ``stats.npz``; returns the level's summary."""
    import jax
    import jax.numpy as jnp

    import jaxsparse as js
    from jaxsparse import forgetting
    from jaxsparse.forgetting import records

    steps, vog_steps = snapshot_steps(config)
    name = variant_name(sparsity)
    seeds = member_seeds(config, sparsity)
    events, snaps = state.hook_state
    x_te, y_te = jnp.asarray(d["x_test"]), jnp.asarray(d["y_test"])
    x_tr, y_tr = jnp.asarray(d["x_train"]), jnp.asarray(d["y_train"])
    opts = dict(values=config.record_values, layout=config.record_layout, sparsity=sparsity)
    tables = []
    test_logits = fns["snapshot_logits"](snaps, state.model_state, x_te)  # [P, S, N, C]
    for i, step in enumerate(steps):
        pop = forgetting.population(name, labels=y_te, logits=test_logits[:, i], seeds=seeds,
                                    split="test", checkpoint=step)
        tables.append(records.to_table(pop, **opts))
    train_logits = fns["logits"](state.params, state.model_state, x_tr)
    pop_tr = forgetting.population(name, labels=y_tr, logits=train_logits, seeds=seeds,
                                   split="train", checkpoint=int(config.num_steps))
    tables.append(records.to_table(pop_tr, **opts))

    vog_idx = jnp.asarray([steps.index(s) for s in vog_steps])
    vog = fns["vog"](jax.tree.map(lambda s: s[:, vog_idx], snaps), state.model_state, x_te, y_te)
    summary = forgetting.forgetting_summary(events)
    stats = {f"vog_{k}": np.asarray(v) for k, v in vog.items()}
    stats.update(events=np.asarray(summary.events), presentations=np.asarray(
        summary.presentations), never_learned=np.asarray(summary.never_learned),
        unforgettable=np.asarray(summary.unforgettable), seeds=seeds)
    density = np.asarray(jax.vmap(js.density)(state.masks))
    stats["density"] = density
    if sparsity == 0:  # EL2N / GraNd of the dense population, a few epochs in
        i = steps.index(int(config.score_step))
        early = jax.tree.map(lambda s: s[:, i], snaps)
        stats["el2n"] = np.asarray(forgetting.el2n(fns["logits"](early, state.model_state, x_tr),
                                                   y_tr))
        stats["grand"] = np.asarray(fns["grand"](early, state.model_state, state.masks, x_tr,
                                                 y_tr))
    level_dir = os.path.join(run, level_id(sparsity))
    tmp = os.path.join(level_dir, "stats.tmp.npz")
    np.savez(tmp, **stats)
    os.replace(tmp, os.path.join(level_dir, "stats.npz"))
    records.write_part(os.path.join(run, "record"), level_id(sparsity), tables)
    if sparsity == 0 and config.int8:  # the int8 compression variant of the dense population
        qparams = jax.vmap(forgetting.quantize_int8)(state.params)
        parts = []
        for split, x, y in (("test", x_te, y_te), ("train", x_tr, y_tr)):
            pop = forgetting.population("int8", labels=y, logits=fns["logits"](
                qparams, state.model_state, x), seeds=seeds, split=split,
                checkpoint=int(config.num_steps))
            parts.append(records.to_table(pop, **opts))
        records.write_part(os.path.join(run, "record"), "int8", parts)
    return {"variant": name, "sparsity": sparsity, "density_mean": float(density.mean()),
            "test_accuracy": np.asarray(forgetting.population(
                name, labels=y_te, logits=test_logits[:, -1]).accuracy).tolist()}


def run_level(config: Any, d: dict, sparsity: float, run: str, fn, fns: dict, *,
              show_progress: bool = True) -> dict:
    """Trains and records one level unless ``done.json`` says it is finished."""
    level_dir = os.path.join(run, level_id(sparsity))
    done = os.path.join(level_dir, "done.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(level_dir, exist_ok=True)
    t0 = time.time()
    result = train_level(config, d, sparsity, level_dir, fn, show_progress=show_progress)
    t_train = time.time() - t0
    summary = record_level(config, d, sparsity, result.state, fns, run)
    summary.update(train_seconds=t_train, record_seconds=time.time() - t0 - t_train,
                   history=result.history)
    common.write_json(done, summary)
    shutil.rmtree(os.path.join(level_dir, "ckpt"), ignore_errors=True)  # finished: not needed
    return summary


# ---------------------------------------------------------------------------------------
# Analysis


def _pct(x: float) -> float:
    return 100.0 * float(x)


def analyse(config: Any, d: dict, run: str) -> tuple[list[dict], dict]:
    """``(level table rows, training-set scores)`` from the record and the levels' stats
    (see the module docstring); writes results.json."""
    import jax
    import jax.numpy as jnp

    from jaxsparse import forgetting
    from jaxsparse.forgetting import records

    root = os.path.join(run, "record")
    sparsities = [float(s) for s in config.sparsities]
    variants = [variant_name(s) for s in sparsities]
    if 0.0 not in sparsities:
        raise ValueError("sparsities must include 0 (the dense population)")
    has_int8 = records.has_part(root, "int8") and bool(config.int8)
    table = records.read(root)
    names = variants + (["int8"] if has_int8 else [])
    test = records.load_many(table, names, split="test", checkpoint=int(config.num_steps))
    trn = records.load_many(table, names, split="train", checkpoint=int(config.num_steps))
    dense, dense_tr = test["dense"], trn["dense"]
    noisy = jnp.asarray(d["noisy"])
    key = jax.random.key(int(config.seed) + 12345)
    tie, level = config.tie, float(config.ci)
    null_only = forgetting.pie_null(dense, key=key, num_draws=int(config.null_draws),
                                    tie=tie).summary(level)
    rows = []
    for i, name in enumerate(names):
        pop = test[name]
        acc = np.asarray(pop.accuracy, np.float64)
        row: dict[str, Any] = {
            "variant": name, "sparsity": sparsities[i] if i < len(sparsities) else float("nan"),
            "members": pop.size, "top1_mean": _pct(acc.mean()),
            "top1_sd": _pct(acc.std(ddof=1)) if pop.size > 1 else float("nan")}
        if name == "dense":
            row.update(null_pct=_pct(null_only["null"]), null_lo=_pct(null_only["null_lo"]),
                       null_hi=_pct(null_only["null_hi"]), null_size=null_only["size"])
            rows.append(row)
            continue
        p = forgetting.pie(dense, pop, tie=tie)
        # int8 is the dense members quantised: paired draws (the copies of dense half B)
        draws = forgetting.pie_null(dense, pop, key=jax.random.fold_in(key, i),
                                    num_draws=int(config.null_draws), tie=tie,
                                    paired=name == "int8").summary(level)
        rest = ~p.mask
        disp = forgetting.class_disparity(dense, pop, alpha=float(config.alpha))
        dist, cie = forgetting.taxicab(dense, pop, fraction=float(config.cie_fraction))
        p_tr = forgetting.pie(dense_tr, trn[name], tie=tie)
        n_pie_tr = int(p_tr.mask.sum())
        row.update(
            pie_pct=_pct(p.share), n_pie=int(p.mask.sum()),
            pie_dense_right=int(p.dense_right.sum()), pie_pruned_right=int(p.pruned_right.sum()),
            pie_m_pct=_pct(draws["pie"]), pie_m_lo=_pct(draws["pie_lo"]),
            pie_m_hi=_pct(draws["pie_hi"]), null_pct=_pct(draws["null"]),
            null_lo=_pct(draws["null_lo"]), null_hi=_pct(draws["null_hi"]),
            excess_pct=_pct(draws["excess"]), excess_lo=_pct(draws["excess_lo"]),
            excess_hi=_pct(draws["excess_hi"]), excess_le0=draws["excess_le0"],
            null_size=draws["size"],
            dense_acc_pie=_pct(np.nanmean(forgetting.subset_accuracy(dense, p.mask)))
            if p.mask.any() else float("nan"),
            dense_acc_rest=_pct(np.mean(forgetting.subset_accuracy(dense, rest))),
            pruned_acc_pie=_pct(np.nanmean(forgetting.subset_accuracy(pop, p.mask)))
            if p.mask.any() else float("nan"),
            pruned_acc_rest=_pct(np.mean(forgetting.subset_accuracy(pop, rest))),
            classes_p05=[int(c) for c in np.flatnonzero(disp.p <= float(config.alpha))],
            classes_bh=[f"{c}{'+' if disp.difference[c] > 0 else '-'}"
                        for c in np.flatnonzero(disp.significant)],
            class_difference=[_pct(v) for v in disp.difference],
            class_p_adjusted=[float(v) for v in disp.p_adjusted],
            taxicab_cie=int(cie.sum()), taxicab_mean=float(np.mean(dist)),
            train_pie_pct=_pct(p_tr.share), train_n_pie=n_pie_tr,
            noisy_share_of_train_pies=_pct(noisy[p_tr.mask].mean())
            if n_pie_tr and noisy.any() else float("nan"),
            noisy_base_pct=_pct(noisy.mean()),
            train_pie_rate_noisy=_pct(p_tr.mask[noisy].mean()) if noisy.any() else float("nan"),
            train_pie_rate_clean=_pct(p_tr.mask[~noisy].mean()),
        )
        rows.append(row)
    scores = training_scores(config, d, run)
    common.write_json(os.path.join(run, "results.json"), {
        "rows": rows, "training_scores": scores, "tie": tie, "ci": level,
        "source": d["source"]})
    return rows, scores


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney U / n1 n0)."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, bool)
    if pos.all() or not pos.any():
        return float("nan")
    ranks = rankdata(score)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def training_scores(config: Any, d: dict, run: str) -> dict[str, dict[str, float]]:
    """Per level: forgetting events, never-learned / unforgettable shares, and (dense) EL2N and
    GraNd, on the noisy vs the clean training examples, with each score's AUC for noisy."""
    noisy = np.asarray(d["noisy"])
    out = {}
    for s in config.sparsities:
        with np.load(os.path.join(run, level_id(float(s)), "stats.npz")) as z:
            stats = {k: z[k] for k in z.files}
        row: dict[str, float] = {}
        names = ["events", "never_learned", "unforgettable"]
        names += [k for k in ("el2n", "grand") if k in stats]
        for name in names:
            v = stats[name].astype(np.float64).mean(0)  # population mean per example
            row[f"{name}_noisy"] = float(v[noisy].mean()) if noisy.any() else float("nan")
            row[f"{name}_clean"] = float(v[~noisy].mean())
            row[f"{name}_auc_noisy"] = _auc(v, noisy)
        out[variant_name(float(s))] = row
    return out


TABLE_COLUMNS = (
    ("variant", "variant", "{}"), ("top1", "top1_mean", "{:.2f}"), ("sd", "top1_sd", "{:.2f}"),
    ("PIE%", "pie_pct", "{:.2f}"), ("PIE%@m", "pie_m_pct", "{:.2f}"),
    ("null%@m", "null_pct", "{:.2f}"), ("excess%", "excess_pct", "{:+.2f}"),
    ("excess CI", None, None), ("P(ex<=0)", "excess_le0", "{:.3f}"),
    ("acc d/p PIE", None, None), ("acc d/p rest", None, None),
    ("BH classes", "classes_bh", None), ("trainPIE%", "train_pie_pct", "{:.2f}"),
    ("noisy% of trPIE", "noisy_share_of_train_pies", "{:.1f}"),
)


def format_table(rows: list[dict]) -> str:
    """The level table as aligned text (one line per population)."""
    def cell(row, head, key, fmt):
        if head == "excess CI":
            return ("[{:+.2f}, {:+.2f}]".format(row["excess_lo"], row["excess_hi"])
                    if "excess_lo" in row else f"null [{row['null_lo']:.2f}, {row['null_hi']:.2f}]")
        if head.startswith("acc d/p"):
            part = "pie" if "PIE" in head else "rest"
            if f"dense_acc_{part}" not in row:
                return ""
            return f"{row[f'dense_acc_{part}']:.1f}/{row[f'pruned_acc_{part}']:.1f}"
        if key not in row:
            return ""
        v = row[key]
        if isinstance(v, list):
            return ",".join(map(str, v)) or "-"
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        return fmt.format(v)

    lines = [[h for h, _, _ in TABLE_COLUMNS]]
    lines += [[cell(r, h, k, f) for h, k, f in TABLE_COLUMNS] for r in rows]
    widths = [max(len(line[j]) for line in lines) for j in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                     for line in lines)


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """Training-set scores on noisy vs clean examples (mean; AUC of the score for noisy)."""
    def f(v: Any, spec: str) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    lines = ["training set, noisy vs clean labels (population means; AUC: the score ranks a "
             "noisy example above a clean one)"]
    for variant, row in scores.items():
        parts = []
        for name in ("events", "never_learned", "el2n", "grand"):
            if f"{name}_noisy" in row:
                parts.append(f"{name} {f(row[f'{name}_noisy'], '.3g')} vs "
                             f"{f(row[f'{name}_clean'], '.3g')} "
                             f"(AUC {f(row[f'{name}_auc_noisy'], '.3f')})")
        lines.append(f"{variant:>14}: " + "; ".join(parts))
    return "\n".join(lines)


def _flat_rows(rows: list[dict]) -> dict[str, list]:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], list)]
    return {k: [r.get(k, float("nan")) for r in rows] for k in keys}


# ---------------------------------------------------------------------------------------
# Pictures


def plots(config: Any, d: dict, run: str, rows: list[dict]) -> list[str]:
    """The four PNGs of the module docstring; returns their paths."""

    from jaxsparse import forgetting
    from jaxsparse.forgetting import records

    root = os.path.join(run, "record")
    levels = [r for r in rows if r["variant"] not in ("dense", "int8")]
    dense_row = rows[0]
    out = []

    if not levels:
        return out
    # PIE share vs sparsity with the null band
    fig, ax = common.subplots(figsize=(6.5, 4))
    s = [r["sparsity"] for r in levels]
    ax.fill_between([min(s), max(s)], dense_row["null_lo"], dense_row["null_hi"], color="gray",
                    alpha=0.25, label=f"dense-vs-dense null ({config.ci:.0%} interval)")
    ax.axhline(dense_row["null_pct"], color="gray", lw=1)
    yerr = [[r["pie_m_pct"] - r["pie_m_lo"] for r in levels],
            [r["pie_m_hi"] - r["pie_m_pct"] for r in levels]]
    ax.errorbar(s, [r["pie_m_pct"] for r in levels], yerr=yerr, fmt="o-", capsize=3,
                label=f"PIE share, {dense_row['null_size']} vs {dense_row['null_size']} members")
    ax.plot(s, [r["pie_pct"] for r in levels], "s--",
            label=f"PIE share, all {levels[0]['members'] if levels else ''} members")
    ax.set(xlabel="sparsity (fraction of weights pruned)", ylabel="% of test examples",
           title="Pruning identified exemplars vs the null")
    ax.legend(fontsize=8)
    out.append(common.save_figure(fig, os.path.join(run, "pie_share.png")))

    top = levels[-1]
    dense = records.load(root, "dense", split="test")
    pruned = records.load(root, top["variant"], split="test")
    p = forgetting.pie(dense, pruned, tie=config.tie)
    # gallery: the PIEs pruning got wrong first, then the ones it got right
    idx = [int(i) for i in np.flatnonzero(np.asarray(p.dense_right))]
    idx += [int(i) for i in np.flatnonzero(np.asarray(p.mask & ~p.dense_right))]
    idx = idx[:24]
    cols = 8
    nrow = max(1, -(-len(idx) // cols))
    fig, axes = common.subplots(nrow, cols, figsize=(cols * 1.3, nrow * 1.55), squeeze=False)
    for a in axes.ravel():
        a.axis("off")
    for a, i in zip(axes.ravel(), idx, strict=False):
        a.imshow(d["x_test"][i][..., 0], cmap="gray_r")
        color = "C3" if bool(p.dense_right[i]) else "C2" if bool(p.pruned_right[i]) else "0.4"
        a.set_title(f"y={d['y_test'][i]} d={int(p.dense_mode[i])} p={int(p.pruned_mode[i])}",
                    fontsize=7, color=color)
    fig.suptitle(f"PIEs at {top['variant']}: y label, d dense mode, p pruned mode (red: dense "
                 "right, green: pruned right, gray: neither)", fontsize=9)
    out.append(common.save_figure(fig, os.path.join(run, "pie_gallery.png")))

    # per-class disparity bars
    c = d["num_classes"]
    fig, ax = common.subplots(figsize=(7, 4))
    width = 0.8 / len(levels)
    for j, r in enumerate(levels):
        diff = r["class_difference"]
        xs = np.arange(c) + (j - (len(levels) - 1) / 2) * width
        ax.bar(xs, diff, width, label=r["variant"])
        for cls in range(c):
            if r["class_p_adjusted"][cls] <= config.alpha:
                ax.text(xs[cls], diff[cls], "*", ha="center",
                        va="bottom" if diff[cls] >= 0 else "top")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(c))
    ax.set(xlabel="class", ylabel="centred recall change (pp)",
           title="Per-class change vs dense (* BH-adjusted p <= alpha)")
    ax.legend(fontsize=7)
    out.append(common.save_figure(fig, os.path.join(run, "class_disparity.png")))

    # error by VoG decile (dense population's class-normalised VoG)
    with np.load(os.path.join(run, level_id(0.0), "stats.npz")) as z:
        v = z["vog_all"].mean(0)
    score = np.asarray(forgetting.class_normalise(v, d["y_test"],
                                                  num_classes=d["num_classes"]))
    edges = np.quantile(score, np.linspace(0, 1, 11))
    dec = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, 9)
    fig, ax = common.subplots(figsize=(6.5, 4))
    for r in [dense_row, *levels]:
        pop = records.load(root, r["variant"], split="test")
        err = 1 - np.asarray(pop.correct, np.float64).mean(0)
        ax.plot(np.arange(1, 11), [100 * err[dec == k].mean() for k in range(10)], "o-",
                label=r["variant"], ms=3)
    ax.set(xlabel="VoG decile (dense population, class-normalised)",
           ylabel="test error (%)", title="Error by VoG decile")
    ax.legend(fontsize=7)
    out.append(common.save_figure(fig, os.path.join(run, "vog_deciles.png")))
    return out


# ---------------------------------------------------------------------------------------


def run(config: Any, out: str, *, analyse_only: bool = False,
        show_progress: bool = True) -> tuple[str, list[dict]]:
    """Trains / records every level (resumable), then analyses; ``(run dir, table rows)``.

    The run directory is ``common.run_dir``'s (hyperparameters and the data's content hash)
    without the list of sparsities, so asking for another level extends a run.
    """
    d = load_data(config)
    path = common.run_dir(out, config, dataset=d["dataset"], exclude=HASH_EXCLUDE)
    np.savez(os.path.join(path, "noise.npz"), noisy=d["noisy"], clean=d["y_clean"],
             train=d["y_train"])
    if not analyse_only:
        fn = common.build_model(config, d["dataset"])
        fns = _population_fns(fn, config)
        for s in config.sparsities:
            t0 = time.time()
            summary = run_level(config, d, float(s), path, fn, fns, show_progress=show_progress)
            acc = 100 * np.mean(summary["test_accuracy"])
            print(f"{summary['variant']:>14}: test top-1 {acc:.2f} (density "
                  f"{summary['density_mean']:.3f}) [{time.time() - t0:.1f}s]", flush=True)
    rows, scores = analyse(config, d, path)
    text = format_table(rows) + "\n\n" + format_scores(scores)
    with open(os.path.join(path, "table.txt"), "w") as f:
        f.write(text + "\n")
    common.write_csv(os.path.join(path, "table.csv"), _flat_rows(rows))
    plots(config, d, path, rows)
    return path, rows


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, out="runs/forgetting")
    p.add_argument("--analyse-only", action="store_true",
                   help="recompute the table and plots from the record")

    def go(config: Any, args: argparse.Namespace) -> None:
        t0 = time.time()
        path, _ = run(config, args.out, analyse_only=args.analyse_only,
                      show_progress=not args.quiet)
        with open(os.path.join(path, "table.txt")) as f:
            print(f.read())
        print(f"wrote {path}/table.txt, table.csv, results.json, record/, *.png "
              f"[{time.time() - t0:.0f}s]")

    return cli.main(p, argv, go, validate=validate, members=lambda c, a: int(c.members),
                    driver="forgetting")


if __name__ == "__main__":
    sys.exit(main())
