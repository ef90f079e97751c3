"""N:M (2:4) recipes side by side: dense, one-shot, one-shot + fine-tune (ASP), SR-STE, STE.

    python -m experiments.nm --config experiments/configs/nm_digits_lenet.py
    python -m experiments.nm --config experiments/configs/nm_digits_conv4.py
    python -m experiments.nm --config experiments/configs/nm_resnet20_cifar10.py \\
        --data-dir ~/data/cifar10

Methods (config.methods):
  * ``dense``: train dense for ``num_steps`` (the original schedule).
  * ``one_shot``: the dense result pruned to N:M by magnitude along each kernel's reduction
    axis (``jaxsparse.nm_masks``), no training.
  * ``one_shot_finetune``: those masks, then ``num_steps`` more of masked training with a fresh
    optimizer on the original schedule (NVIDIA ASP).
  * ``sr_ste``: from scratch, forward through ``jaxsparse.sr_ste`` (mask recomputed from |w|
    every step, straight-through gradient + lambda_w * (1 - m) * w), ``num_steps``.
  * ``ste``: the same with lambda_w = 0.
Every sparse result is checked with ``jaxsparse.is_nm`` (hardware orientation). Writes
``<out>/<name>-<hash>/results.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from experiments import common
from experiments import train as train_exp


def _rules(config: Any) -> list:
    return [(p, bool(v)) for p, v in (config.get("prunable", ()) or ())]


def _fit(config, fn_apply, tx, state, dataset, augment):
    from jaxsparse import train

    return train.fit(fn_apply, tx, state, dataset, num_steps=config.num_steps,
                     batch_size=config.batch_size, eval_every=config.eval_every,
                     augment=augment)


def run(config: Any, out: str) -> dict:
    """Runs every method of the config; returns (and writes) the results dict."""
    import jax

    import jaxsparse as js
    from jaxsparse import data, train

    path = common.run_dir(out, config)
    if common.is_finished(path):
        import json

        with open(os.path.join(path, "results.json")) as f:
            results = json.load(f)
        print_table(results)
        return results
    dataset = data.load(config.dataset, data_dir=config.get("data_dir"),
                        val_size=config.get("val_size"))
    augment = data.augmentation_for(dataset.name) if config.get("augment") else None
    n, m, rules = config.n, config.m, _rules(config)
    methods = tuple(config.methods)
    rows: dict[str, dict] = {}

    def record(name, params, masks, apply_fn, fit_result=None, seconds=0.0, model_state=None):
        sparse = params if masks is None else js.apply_masks(params, masks)
        x_te, y_te = dataset.test
        ev = train.evaluate(apply_fn, sparse, x_te, y_te, model_state=model_state)
        nm_ok = None if masks is None else bool(js.is_nm(sparse, n, m, rules=rules).ok)
        density = 1.0 if masks is None else float(js.density(masks))
        rows[name] = dict(test_accuracy=ev["accuracy"], test_loss=ev["loss"], density=density,
                          nm_legal=nm_ok, seconds=seconds,
                          early_stop=None if fit_result is None else fit_result.early_stop)
        print(f"  {name:<18} test accuracy {ev['accuracy']:.4f}  ({seconds:.0f}s)")

    fn, tx, state = train_exp.build(config, dataset)
    t0 = time.perf_counter()
    dense = _fit(config, fn.apply_fn, tx, state, dataset, augment)
    dense_params, dense_ms = dense.state.params, dense.state.model_state
    record("dense", dense_params, None, fn.apply_fn, dense, time.perf_counter() - t0, dense_ms)

    masks = js.nm_masks(dense_params, n, m, rules=rules)
    if "one_shot" in methods:
        record("one_shot", dense_params, masks, fn.apply_fn, model_state=dense_ms)
    if "one_shot_finetune" in methods:
        t0 = time.perf_counter()
        st = train.init_state(dense_params, tx, key=jax.random.key(config.seed + 1),
                              model_state=dense_ms, masks=masks)
        ft = _fit(config, fn.apply_fn, tx, st, dataset, augment)
        record("one_shot_finetune", ft.state.params, masks, fn.apply_fn, ft,
               time.perf_counter() - t0, ft.state.model_state)
    for name, lam in (("sr_ste", config.lambda_w), ("ste", 0.0)):
        if name not in methods:
            continue

        def apply_sparse(params, model_state, x, *, train, key, lam=lam):
            return fn.apply_fn(js.sr_ste(params, n, m, lambda_w=lam, rules=rules),
                               model_state, x, train=train, key=key)

        t0 = time.perf_counter()
        res = _fit(config, apply_sparse, tx, state, dataset, augment)
        final_masks = js.nm_masks(res.state.params, n, m, rules=rules)
        record(name, res.state.params, final_masks, fn.apply_fn, res,
               time.perf_counter() - t0, res.state.model_state)

    results = {"config": common.to_dict(config), "dataset": repr(dataset), "rows": rows}
    common.write_json(os.path.join(path, "results.json"), results)
    print_table(results)
    print(f"results: {os.path.join(path, 'results.json')}")
    return results


def print_table(results: dict) -> None:
    c = results["config"]
    print(f"\n{c['name']}: {c['n']}:{c['m']} along the reduction axis, {c['num_steps']} "
          f"iterations per training run")
    print(f"{'method':<20}{'density':>9}{'test acc':>10}{'early-stop acc':>16}{'N:M legal':>11}")
    for name, r in results["rows"].items():
        es = r.get("early_stop") or {}
        es_acc = f"{es['test_accuracy']:.4f}" if "test_accuracy" in es else "-"
        legal = "-" if r["nm_legal"] is None else str(r["nm_legal"])
        print(f"{name:<20}{r['density']:>9.3f}{r['test_accuracy']:>10.4f}{es_acc:>16}"
              f"{legal:>11}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--dataset")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", action="append", default=[], help="key=value override")
    args = ap.parse_args(argv)
    config = common.load_config(args.config)
    if args.dataset:
        config.dataset = args.dataset
    if args.data_dir:
        config.data_dir = args.data_dir
    config = common.apply_overrides(config, args.set)
    run(config, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
