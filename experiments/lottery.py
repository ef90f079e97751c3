"""Iterative magnitude pruning (lottery tickets): levels, replicates, controls, plots, export.

    python -m experiments.lottery --config experiments/configs/lottery/digits_lenet.py \\
        --out runs/demo
    python -m experiments.lottery --config experiments/configs/lottery/frankle2019_lenet300.py \\
        --data-file /path/mnist_subset_6k.npz --set num_steps=5000 --levels 8

A thin command line over the library's IMP loop, :func:`jaxsparse.lottery.imp`: level 0
trains the dense network; level ``l >= 1`` prunes the trained weights of level ``l - 1`` with
the config's plan (layerwise rates or a global rate, a criterion) and restarts from the
rewind point. The ``replicates`` are ONE population (one compiled program per chunk, sharded
over every device; on a CPU-only machine up to one device per core, ``--cpu-devices``). At
every level >= 1 the configured *branches* (controls) train from the same level: random
re-initialisation of the ticket's mask, random pruning with the ticket's per-layer counts,
other criteria, other mask-1 / mask-0 actions.

Rewinding (``config.rewind``): ``"init"`` (k = 0), ``"iteration"`` (to the snapshot taken at
iteration ``rewind_step`` of the dense run), ``"lr"`` (learning-rate rewinding), ``"finetune"``.

Output (``<out>/<name>-<hash>/``; the hash covers the hyperparameters except ``levels`` and
where data lives, plus the data's content hash, so asking for more levels extends a run and
other data never reuses it): ``level_XX/<branch>/`` with ``ckpt/`` and ``result.json``;
``level_XX/ticket/export/`` (replicate 0's ticket, ``jaxsparse.lottery.load_ticket``);
``levels.csv`` (mean and sample std over replicates), ``replicates.csv``, ``results.json``,
``accuracy.png`` (test accuracy at early stop and at the end, full range and zoomed to the
branches that do not collapse) and ``early_stop.png``. A relaunch skips finished levels and
resumes a killed one from its newest checkpoint; the table is then bitwise the one of an
uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import numpy as np

from experiments import cli, common

HASH_EXCLUDE = (*common.NON_HASHED, "levels")
REWINDS = ("init", "iteration", "lr", "finetune")


# ---------------------------------------------------------------------------------------
# Building blocks from the config.


def make_plan(config: Any):
    """``jaxsparse.lottery.Plan`` of the config (scope, rates / rate, criterion, weights)."""
    from jaxsparse import lottery

    weights = "trained" if config.rewind in ("lr", "finetune") else "rewind"
    if config.scope == "global":
        return lottery.Plan(scope="global", rate=config.rate, criterion=config.criterion,
                            weights=weights)
    rates = [tuple(r) for r in config.rates]
    return lottery.Plan(scope="layerwise", rates=rates, criterion=config.criterion,
                        weights=weights)


def parse_branch(name: str):
    """``"reinit"``, ``"random_prune"``, ``"crit:<criterion>"`` or ``"action:<mask1>:<mask0>"``."""
    from jaxsparse import lottery

    if name == "reinit":
        return lottery.reinit_control()
    if name == "random_prune":
        return lottery.random_pruning_control()
    if name.startswith("crit:"):
        return lottery.criterion_branch(name.split(":", 1)[1])
    if name.startswith("action:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise cli.UsageError(f"branch {name!r}: expected action:<mask1>:<mask0>")
        return lottery.action_branch(parts[1], parts[2])
    raise cli.UsageError(f"unknown branch {name!r}: reinit | random_prune | crit:<name> | "
                         "action:<mask1>:<mask0>")


def validate(config: Any) -> None:
    """Every check that needs no training: plan, branches, rewinding, counts (UsageError)."""
    from jaxsparse import lottery

    cli.check_training(config)
    cli.positive(config, "replicates")
    if not isinstance(config.levels, int) or config.levels < 0:
        raise cli.UsageError(f"config levels={config.levels!r}: must be an integer >= 0")
    if config.rewind not in REWINDS:
        raise cli.UsageError(f"config rewind={config.rewind!r}: expected one of {REWINDS}")
    k = int(config.get("rewind_step", 0) or 0)
    if config.rewind != "init" and not 0 <= k < config.num_steps:
        raise cli.UsageError(f"config rewind_step={k}: must be in [0, num_steps="
                             f"{config.num_steps})")
    try:
        plan = make_plan(config)
        for b in config.branches:
            branch = parse_branch(b)
            if isinstance(branch.masks, str) and branch.masks not in ("ticket", "random"):
                lottery.Plan(rates=[(".*", 0.1)], criterion=branch.masks)
            lottery.Plan(rates=[(".*", 0.1)], mask1=branch.mask1, mask0=branch.mask0)
    except cli.UsageError:
        raise
    except (ValueError, TypeError) as e:
        raise cli.UsageError(f"config (scope={config.scope!r}, rates={config.get('rates')!r}, "
                             f"rate={config.get('rate')!r}, criterion={config.criterion!r}, "
                             f"branches={list(config.branches)!r}): {e}") from None
    del plan


def _pause_for_tests(level: int, branch: str, step: int) -> None:
    # Fault injection for the kill/resume test: stop here (the checkpoint of `step` is on
    # disk) and wait to be SIGKILLed from outside.
    target = os.environ.get("JAXSPARSE_LOTTERY_PAUSE")
    if target is not None and target == f"{level}:{branch}:{step}":
        with open(os.environ["JAXSPARSE_PAUSE_FILE"], "w") as f:
            f.write(target)
        while True:
            signal.pause()


# ---------------------------------------------------------------------------------------
# The experiment: the library's IMP loop (jaxsparse.lottery.imp) with this run's directory.


def num_runs(config: Any) -> int:
    """(level, branch) runs of the config: the progress bar's total."""
    levels = int(config.levels)
    with_branches = [lv for lv in range(1, levels + 1)
                     if not config.get("branch_levels") or lv in config.branch_levels]
    return levels + 1 + len(with_branches) * len(config.branches)


def experiment(config: Any, path: str, dataset: Any, *, show_progress: bool = True) -> list:
    """Runs (resumes, or skips the finished runs of) the config's IMP experiment in ``path``."""
    import jax

    from jaxsparse import data as data_lib
    from jaxsparse import lottery
    from jaxsparse.population import take_member

    fn = common.build_model(config, dataset)
    plan = make_plan(config)

    def export(level, params, masks, model_state):
        where = os.path.join(path, f"level_{level:02d}", "ticket", "export")
        if config.get("export", True) and not os.path.exists(os.path.join(where,
                                                                          "density.json")):
            lottery.export_ticket(where, take_member(params, 0),
                                  take_member(masks, 0),
                                  model_state=take_member(model_state, 0),
                                  metadata={"level": level, "replicate": 0,
                                            "config": common.to_dict(config)})

    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_runs(config), desc=config.name, unit="run", dynamic_ncols=True)

    def report(res: dict) -> None:
        if bar is None:
            return
        bar.update(1)
        bar.write(f"level {res['level']:2d} {res['branch']:>14s}: "
                  f"{100 * np.mean(res['density']):7.3f}% remaining, early stop "
                  f"{np.mean(res['early_stop_step']):7.0f}, test acc there "
                  f"{np.mean(res['early_stop_test_accuracy']):.4f}, final "
                  f"{np.mean(res['final_test_accuracy']):.4f}")

    pause = _pause_for_tests if os.environ.get("JAXSPARSE_LOTTERY_PAUSE") else None
    rules = [tuple(r) for r in config.get("prunable", ()) or ()]
    try:
        return lottery.imp(
            fn.apply_fn, fn.init_fn, dataset, plan=plan, levels=int(config.levels),
            tx=lambda start, finetune: common.build_tx(config, offset=start, finetune=finetune),
            num_steps=int(config.num_steps), batch_size=int(config.batch_size),
            eval_every=int(config.eval_every), key=jax.random.key(config.seed),
            replicates=int(config.replicates), rewind_to=config.rewind,
            rewind_step=int(config.get("rewind_step", 0) or 0),
            branches=[parse_branch(b) for b in config.branches],
            branch_levels=list(config.get("branch_levels", ()) or ()), rules=rules or None,
            directory=path, checkpoint_every=int(config.checkpoint_every),
            keep=int(config.get("keep_checkpoints", 2)),
            augment=data_lib.augmentation_for(dataset.name) if config.get("augment") else None,
            on_level=export, on_result=report, on_checkpoint=pause)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------
# Tables. Spread = sample std over replicates (common.SPREAD), everywhere.

SUMMARY_KEYS = ("early_stop_step", "early_stop_test_accuracy", "final_test_accuracy")


def step_cap(res: dict) -> int:
    """The last evaluated iteration of a run: an early stop there is capped (the validation
    loss was still falling when training ended)."""
    return int(np.max(res["history"]["step"]))


def table_rows(results: list[dict]) -> list[dict]:
    """One row per (level, branch): densities, mean and sample std over replicates, and how
    many replicates' early stop sits at the step cap."""
    rows = []
    for res in results:
        row = {"level": res["level"], "branch": res["branch"],
               "percent_remaining": 100 * float(np.mean(res["density"]))}
        for path, d in res["layers"].items():
            row[f"density[{path}]"] = d
        for key in SUMMARY_KEYS:
            row[f"{key}_mean"], row[f"{key}_sample_std"] = common.mean_std(res[key])
        row["early_stop_capped"] = int(np.sum(np.asarray(res["early_stop_step"])
                                              >= step_cap(res)))
        row["step_cap"] = step_cap(res)
        row["replicates"] = len(res["density"])
        rows.append(row)
    return rows


def replicate_rows(results: list[dict]) -> list[dict]:
    out = []
    for res in results:
        for r in range(len(res["density"])):
            out.append({"level": res["level"], "branch": res["branch"], "replicate": r,
                        "density": res["density"][r],
                        "early_stop_step": res["early_stop_step"][r],
                        "early_stop_capped": int(res["early_stop_step"][r] >= step_cap(res)),
                        "early_stop_test_accuracy": res["early_stop_test_accuracy"][r],
                        "final_test_accuracy": res["final_test_accuracy"][r]})
    return out


def write_tables(path: str, results: list[dict]) -> list[dict]:
    rows = table_rows(results)
    common.write_rows(os.path.join(path, "levels.csv"), rows)
    common.write_rows(os.path.join(path, "replicates.csv"), replicate_rows(results))
    return rows


def format_table(rows: list[dict]) -> str:
    """The printable level table (layer densities in percent, accuracies in percent)."""
    layers = [k for k in rows[0] if k.startswith("density[")]
    short = [k[len("density["):-1].replace("/kernel", "") for k in layers]
    head = ["level", "branch", "%remain", *short, "ES iter", "ES test acc", "final acc"]
    body = []
    for r in rows:
        sd = lambda k, r=r: "" if np.isnan(r[f"{k}_sample_std"]) else (  # noqa: E731
            f"±{100 * r[f'{k}_sample_std']:.2f}")
        capped = "*" if r["early_stop_capped"] else ""
        body.append([str(r["level"]), r["branch"], f"{r['percent_remaining']:.2f}",
                     *[f"{100 * r[k]:.1f}" for k in layers],
                     f"{r['early_stop_step_mean']:.0f}{capped}",
                     f"{100 * r['early_stop_test_accuracy_mean']:.2f}"
                     f"{sd('early_stop_test_accuracy')}",
                     f"{100 * r['final_test_accuracy_mean']:.2f}{sd('final_test_accuracy')}"])
    n = rows[0]["replicates"]
    notes = [f"mean ± {common.SPREAD} over {n} replicates; accuracies in %."]
    if any(r["early_stop_capped"] for r in rows):
        notes.append("* = at least one replicate's early stop is at the last evaluation "
                     f"(iteration {rows[0]['step_cap']}): its validation loss was still "
                     "falling, the true early-stop iteration is later.")
    return common.format_table(head, body) + "\n" + "\n".join(notes)


def run(config: Any, out: str, *, show_progress: bool = True) -> list[dict]:
    """Runs (resumes, or skips the finished levels of) an IMP experiment; returns the table."""
    from experiments import plots

    t0 = time.perf_counter()
    dataset = common.load_dataset(config)
    path = common.run_dir(out, config, dataset=dataset, exclude=HASH_EXCLUDE)
    print(f"{config.name}: {dataset!r}, model {config.model}, {config.replicates} "
          f"replicates, levels 0..{config.levels}, branches {list(config.branches)}; "
          f"run dir {path}", flush=True)
    results = experiment(config, path, dataset, show_progress=show_progress)
    rows = write_tables(path, results)
    common.write_json(os.path.join(path, "results.json"),
                      {"spread": common.SPREAD, "rows": rows,
                       "data": common.data_summary(dataset)})
    print(format_table(rows))
    plots.accuracy_vs_density(os.path.join(path, "accuracy.png"), results, title=config.name)
    plots.early_stop_vs_density(os.path.join(path, "early_stop.png"), results,
                                title=config.name)
    last = max(r["level"] for r in results)
    print(f"wrote {path}/levels.csv, replicates.csv, results.json, accuracy.png, "
          f"early_stop.png; lowest-density ticket: {path}/level_{last:02d}/ticket/export "
          f"({time.perf_counter() - t0:.1f}s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--replicates", type=int, help="override config.replicates")
    p.add_argument("--levels", type=int, help="override config.levels (0 = dense only)")
    return cli.main(p, argv, cli.runner(run), validate=validate,
                    flags={**cli.DATA_FLAGS, "replicates": "replicates", "levels": "levels"},
                    members=lambda config, args: config.replicates, driver="lottery")


if __name__ == "__main__":
    sys.exit(main())
