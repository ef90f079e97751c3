"""Pruning during training side by side: dense, static (random ERK), SET, RigL, GMP.

    python -m experiments.dst --config experiments/configs/dst/digits_dst.py
    python -m experiments.dst --config experiments/configs/dst/evci2020_rigl_lenet300.py \\
        --data-file /path/mnist_subset_6k.npz
    python -m experiments.dst --config ... --pruner rigl --pruner set   # only these methods

Every method trains with the one trainer (``jaxsparse.train.Trainer``) and a pruner from
:mod:`jaxsparse.pruners` on the step clock, inside the compiled step:

* ``dense``: no pruning (once, whatever the sparsities).
* ``static``: random masks at init with the ``distribution``'s per-layer counts (ERK by
  default), never changed (``pruners.static``).
* ``set`` (Mocanu et al. 2018) / ``rigl`` (Evci et al. 2020): the same initial masks; every
  ``update_every`` iterations until ``update_end`` x ``num_steps``, each layer drops the
  fraction d(t) of its active weights with the smallest |w| (d(t) = ``drop_fraction``,
  annealed to 0 by ``drop_schedule`` = ``"cosine"`` or kept ``"constant"``) and grows as many
  inactive ones, uniformly at random (SET) or by the largest dense-gradient magnitude (RigL);
  per-layer counts stay exact, grown weights start at 0 with zeroed optimizer moments.
* ``gmp`` (Zhu & Gupta 2017): dense at init; every ``gmp_frequency`` iterations between
  ``gmp_begin`` and ``gmp_end`` (fractions of ``num_steps``) each layer keeps its top
  (1 - s_t) by |w|, s_t the cubic schedule to the target sparsity.

Each (method, target sparsity) is ONE population of ``replicates`` (replicate ``i``'s keys
are ``fold_in(key(seed), i)``: they do not depend on the count), with the same step budget
``num_steps`` for every method. Every run is checkpointed (``<method>_s<sparsity>/ckpt``) and
its result written to ``.../result.json``: a relaunch skips finished runs and resumes a killed
one, bitwise. Output ``<out>/<name>-<hash>/`` (the hash covers the hyperparameters and the
data's content hash): ``table.csv`` (mean and sample std over replicates), ``replicates.csv``,
``results.json`` and ``curves.png`` (test accuracy during training, one panel per sparsity,
mean ± sample std bands), and the printed table.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from experiments import cli, common

METHODS = ("dense", "static", "set", "rigl", "gmp")
DISTRIBUTIONS = ("erk", "uniform")
DROP_SCHEDULES = ("cosine", "constant")


def _steps(config: Any, fraction: float) -> int:
    return int(round(float(fraction) * int(config.num_steps)))


def make_pruner(method: str, config: Any, sparsity: float):
    """The :mod:`jaxsparse.pruners` pruner of ``method`` at target ``sparsity`` (``None``:
    dense)."""
    from jaxsparse import pruners

    if method == "dense":
        return None
    if method == "static":
        return pruners.static()
    if method in ("set", "rigl"):
        make = pruners.set_ if method == "set" else pruners.rigl
        return make(drop_fraction=float(config.drop_fraction), anneal=config.drop_schedule,
                    frequency=int(config.update_every), begin_step=0,
                    end_step=_steps(config, config.update_end))
    if method == "gmp":
        begin, every = _steps(config, config.gmp_begin), int(config.gmp_frequency)
        # the last pruning step: the target is reached exactly at a multiple of dt
        end = begin + (_steps(config, config.gmp_end) - begin) // every * every
        return pruners.gmp(final_sparsity=float(sparsity), begin_step=begin, end_step=end,
                           frequency=every, allocation=config.gmp_distribution)
    raise cli.UsageError(f"unknown pruner {method!r}; known: {METHODS}")


def first_step_at_target(method: str, config: Any) -> int:
    """The first evaluation at which ``method`` has its final density: after GMP's last
    pruning step (an early stop is only taken among those), 0 for the others."""
    if method != "gmp":
        return 0
    begin, every = _steps(config, config.gmp_begin), int(config.gmp_frequency)
    return begin + (_steps(config, config.gmp_end) - begin) // every * every + 1


def summarise(history: dict, min_step: int) -> dict:
    """``jaxsparse.lottery.summarise`` over the evaluations at ``step >= min_step`` (at least
    the last one)."""
    from jaxsparse import lottery

    keep = [i for i, s in enumerate(history["step"]) if s >= min_step] or [-1]
    return lottery.summarise({k: [v[i] for i in keep] for k, v in history.items()})


def runs(config: Any) -> list[tuple[str, float]]:
    """(method, target sparsity) of every run: dense once (sparsity 0), the others per
    sparsity."""
    out = [("dense", 0.0)] if "dense" in config.methods else []
    for s in config.sparsities:
        out += [(m, float(s)) for m in config.methods if m != "dense"]
    return out


def validate(config: Any) -> None:
    """Methods, sparsities, schedules and the training keys, before any training."""
    cli.check_training(config)
    cli.positive(config, "replicates", "update_every", "gmp_frequency")
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise cli.UsageError(f"unknown pruner(s) {unknown} in methods={list(config.methods)!r};"
                             f" known: {list(METHODS)}")
    for s in config.sparsities:
        if not isinstance(s, int | float) or not 0.0 < float(s) < 1.0:
            raise cli.UsageError(f"config sparsities: {s!r} is not a sparsity (fraction "
                                 "pruned) in (0, 1)")
    if config.distribution not in DISTRIBUTIONS:
        raise cli.UsageError(f"config distribution={config.distribution!r}: expected one of "
                             f"{DISTRIBUTIONS}")
    if config.gmp_distribution not in DISTRIBUTIONS:
        raise cli.UsageError(f"config gmp_distribution={config.gmp_distribution!r}: expected "
                             f"one of {DISTRIBUTIONS}")
    if config.drop_schedule not in DROP_SCHEDULES:
        raise cli.UsageError(f"config drop_schedule={config.drop_schedule!r}: expected one of "
                             f"{DROP_SCHEDULES}")
    if not 0.0 < float(config.drop_fraction) < 1.0:
        raise cli.UsageError(f"config drop_fraction={config.drop_fraction!r}: must be in (0, 1)")
    for key in ("update_end", "gmp_begin", "gmp_end"):
        if not 0.0 <= float(config[key]) <= 1.0:
            raise cli.UsageError(f"config {key}={config[key]!r}: a fraction of num_steps in "
                                 "[0, 1]")
    if float(config.gmp_end) <= float(config.gmp_begin):
        raise cli.UsageError(f"config gmp_end={config.gmp_end} must be after gmp_begin="
                             f"{config.gmp_begin}")
    try:  # the library's own checks (schedule, fractions) without any JAX work
        for method, s in runs(config):
            make_pruner(method, config, s)
    except (ValueError, TypeError) as e:
        raise cli.UsageError(f"config: {e}") from None


def initial_masks(config: Any, method: str, sparsity: float, params: Any, key: Any):
    """Masks at init: all kept (dense, GMP) or random with the distribution's counts."""
    import jaxsparse as js
    from jaxsparse import pruners

    masks = js.ones_like(params)
    if method in ("dense", "gmp"):
        return masks
    if config.distribution == "erk":
        return pruners.random_erk(params, sparsity=sparsity, key=key)
    return js.prune(js.scores.random(params, key=key), masks, sparsity=sparsity,
                    scope="layerwise")


def run_one(config: Any, path: str, dataset: Any, fn: Any, method: str, sparsity: float, *,
            show_progress: bool = True) -> dict:
    """One (method, sparsity) population: trains (resumes, or reads) it; returns its result."""
    import jax

    from jaxsparse import masks as masks_lib
    from jaxsparse import train
    from jaxsparse.population import take_member

    name = "dense" if method == "dense" else f"{method}_s{sparsity:g}"
    run_path = os.path.join(path, name)
    done = os.path.join(run_path, "result.json")
    if os.path.exists(done):
        return common.read_json(done)
    R = int(config.replicates)
    pruner = make_pruner(method, config, sparsity)
    tx = common.build_tx(config)
    trainer = train.Trainer(fn.apply_fn, tx, batch_size=int(config.batch_size), pruner=pruner)

    def member(keys):
        params, model_state = fn.init_fn(keys[0])
        masks = initial_masks(config, method, sparsity, params, keys[1])
        return trainer.init_state(params, key=keys[2], model_state=model_state, masks=masks)

    state = jax.jit(jax.vmap(member))(common.replicate_keys(int(config.seed), R))
    out, seconds = common.fit(trainer, state, dataset, config, tag=name,
                              checkpoint_dir=os.path.join(run_path, "ckpt"),
                              show_progress=show_progress)
    masks = jax.device_get(out.state.masks)
    reps = [masks_lib.report(take_member(masks, r)) for r in range(R)]
    min_step = first_step_at_target(method, config)
    result = {"name": name, "method": method, "sparsity": sparsity,
              "early_stop_from_step": min_step, **summarise(out.history, min_step),
              "density": [rep.density for rep in reps],
              "layers": {row.path: float(np.mean([rp.rows[i].density for rp in reps]))
                         for i, row in enumerate(reps[0].rows)},
              "history": out.history, "seconds": seconds}
    os.makedirs(run_path, exist_ok=True)
    common.write_json(done, result)
    return result


def table_rows(results: list[dict]) -> list[dict]:
    """One row per run: target sparsity, density, and mean / sample std over replicates."""
    rows = []
    for res in results:
        cap = int(np.max(res["history"]["step"]))
        row = {"method": res["method"], "target_sparsity": res["sparsity"],
               "density_mean": float(np.mean(res["density"]))}
        for path, d in res["layers"].items():
            row[f"density[{path}]"] = d
        for key in ("final_test_accuracy", "early_stop_test_accuracy", "early_stop_step"):
            row[f"{key}_mean"], row[f"{key}_sample_std"] = common.mean_std(res[key])
        row["early_stop_capped"] = int(np.sum(np.asarray(res["early_stop_step"]) >= cap))
        row["replicates"] = len(res["density"])
        rows.append(row)
    return rows


def format_table(rows: list[dict], num_steps: int) -> str:
    head = ["method", "sparsity", "density", "final test acc", "ES test acc", "ES iter"]
    body = []
    for r in rows:
        sd = lambda k, r=r: "" if np.isnan(r[f"{k}_sample_std"]) else (  # noqa: E731
            f"±{100 * r[f'{k}_sample_std']:.2f}")
        body.append([r["method"], f"{r['target_sparsity']:g}", f"{r['density_mean']:.4f}",
                     f"{100 * r['final_test_accuracy_mean']:.2f}{sd('final_test_accuracy')}",
                     f"{100 * r['early_stop_test_accuracy_mean']:.2f}"
                     f"{sd('early_stop_test_accuracy')}",
                     f"{r['early_stop_step_mean']:.0f}{'*' if r['early_stop_capped'] else ''}"])
    n = rows[0]["replicates"]
    notes = [f"test accuracy in %, mean ± {common.SPREAD} over {n} replicates; "
             f"{num_steps} iterations for every method; density = fraction of prunable "
             "weights kept at the end."]
    notes.append("ES = early stop, the evaluation of minimum validation loss (for gmp among "
                 "those after its last pruning step, at its final density).")
    if any(r["early_stop_capped"] for r in rows):
        notes.append("* = at least one replicate's early stop is at the last evaluation: the "
                     "validation loss was still falling.")
    return common.format_table(head, body) + "\n" + "\n".join(notes)


def run(config: Any, out: str, *, show_progress: bool = True) -> list[dict]:
    """Runs (resumes, skips the finished runs of) every (method, sparsity); returns the table."""
    from experiments import plots

    validate(config)
    t0 = time.perf_counter()
    dataset = common.load_dataset(config)
    path = common.run_dir(out, config, dataset=dataset)
    print(f"{config.name}: {dataset!r}, model {config.model}, {config.replicates} replicates,"
          f" methods {list(config.methods)} at sparsities {list(config.sparsities)}; "
          f"run dir {path}", flush=True)
    fn = common.build_model(config, dataset)
    results = []
    for method, s in runs(config):
        res = run_one(config, path, dataset, fn, method, s, show_progress=show_progress)
        results.append(res)
        if show_progress:
            print(f"  {res['name']:<14} density {np.mean(res['density']):.4f}  final test acc "
                  f"{common.fmt_mean_std(res['final_test_accuracy'], 100)}%", flush=True)
    rows = table_rows(results)
    common.write_rows(os.path.join(path, "table.csv"), rows)
    common.write_rows(os.path.join(path, "replicates.csv"), [
        {"method": r["method"], "target_sparsity": r["sparsity"], "replicate": i,
         "density": r["density"][i], "final_test_accuracy": r["final_test_accuracy"][i],
         "early_stop_test_accuracy": r["early_stop_test_accuracy"][i],
         "early_stop_step": r["early_stop_step"][i]}
        for r in results for i in range(len(r["density"]))])
    common.write_json(os.path.join(path, "results.json"),
                      {"spread": common.SPREAD, "rows": rows, "data": common.data_summary(dataset),
                       "config": common.to_dict(config)})
    histories = {r["name"]: r["history"] for r in results}
    dense = [r["name"] for r in results if r["method"] == "dense"]
    panels = {f"target sparsity {s:g}": dense + [r["name"] for r in results
                                                  if r["method"] != "dense"
                                                  and r["sparsity"] == float(s)]
              for s in config.sparsities}
    plots.curves_by_run(os.path.join(path, "curves.png"), histories, metric="test_accuracy",
                        title=config.name, panels=panels)
    print(format_table(rows, int(config.num_steps)))
    print(f"wrote {path}/table.csv, replicates.csv, results.json, curves.png "
          f"({time.perf_counter() - t0:.1f}s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--pruner", action="append", metavar="NAME",
                   help=f"run only these methods (repeatable): {', '.join(METHODS)}")
    p.add_argument("--replicates", type=int, help="override config.replicates")

    def prepare(config: Any, args) -> None:
        if args.pruner:
            unknown = [m for m in args.pruner if m not in METHODS]
            if unknown:
                raise cli.UsageError(f"--pruner {unknown[0]!r}: unknown pruner; known: "
                                     f"{list(METHODS)}")
            config.methods = tuple(args.pruner)

    return cli.main(p, argv, cli.runner(run), validate=validate, prepare=prepare,
                    flags={**cli.DATA_FLAGS, "replicates": "replicates"},
                    members=lambda config, args: config.replicates, driver="dst")


if __name__ == "__main__":
    sys.exit(main())
