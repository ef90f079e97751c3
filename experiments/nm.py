"""N:M (2:4) recipes side by side: dense, one-shot, one-shot + fine-tune (ASP), SR-STE, STE.

    python -m experiments.nm --config experiments/configs/nm/nm_digits_lenet.py
    python -m experiments.nm --config experiments/configs/nm/nm_digits_conv4.py
    python -m experiments.nm --config experiments/configs/nm/nm_resnet20_cifar10.py \\
        --data-dir ~/data/cifar10

Methods (config.methods):
  * ``dense``: train dense for ``num_steps`` (the original schedule); always trained (the
    one-shot methods start from it).
  * ``one_shot``: the dense result pruned to N:M by magnitude along each kernel's reduction
    axis (``jaxsparse.nm_masks``), no training.
  * ``one_shot_finetune``: those masks, then ``num_steps`` more of masked training with a fresh
    optimizer on the original schedule (NVIDIA ASP).
  * ``sr_ste``: from scratch, forward through ``jaxsparse.nm.sr_ste`` (mask recomputed from |w|
    every step, straight-through gradient + lambda_w * (1 - m) * w), ``num_steps``.
  * ``ste``: the same with lambda_w = 0.

Every sparse result is checked with ``jaxsparse.is_nm`` (hardware orientation). ``n`` and
``m`` (``0 < n < m``), the methods and the training keys are checked before anything trains.
Every training run is checkpointed (``<method>/ckpt``, every ``checkpoint_every`` iterations,
default ``eval_every``) and its result written to ``<method>/result.json``: a relaunch skips
finished methods and resumes a killed one, bitwise. Writes ``<out>/<name>-<hash>/``:
``nm.csv`` (the table), ``results.json``, ``curves.png`` (validation accuracy of every trained
method) and prints the table.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from experiments import cli, common

METHODS = ("dense", "one_shot", "one_shot_finetune", "sr_ste", "ste")
TRAINED = ("dense", "one_shot_finetune", "sr_ste", "ste")


def _rules(config: Any) -> list:
    return [(p, bool(v)) for p, v in (config.get("prunable", ()) or ())]


def validate(config: Any) -> None:
    """n, m, methods, lambda_w and the training keys, before any training (UsageError)."""
    import jaxsparse as js

    cli.check_training(config)
    n, m = config.n, config.m
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)):
        raise cli.UsageError(f"config n={n!r}, m={m!r}: must be integers")
    try:
        js.NM(n, m)
    except ValueError as e:
        raise cli.UsageError(f"config n={n}, m={m}: {e}") from None
    unknown = [x for x in config.methods if x not in METHODS]
    if unknown or not config.methods:
        raise cli.UsageError(f"config methods={list(config.methods)!r}: unknown {unknown}; "
                             f"expected some of {METHODS}")
    if not float(config.lambda_w) >= 0:
        raise cli.UsageError(f"config lambda_w={config.lambda_w!r}: must be >= 0")


def run(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Runs (resumes, or skips the finished methods of) every method; returns the results."""
    import jax

    import jaxsparse as js
    from jaxsparse import data, train

    validate(config)
    dataset = common.load_dataset(config)
    path = common.run_dir(out, config, dataset=dataset)
    if common.is_finished(path):
        results = common.read_json(os.path.join(path, "results.json"))
        print(format_table(results))
        return results
    print(f"{config.name}: {dataset!r}, model {config.model}, {config.n}:{config.m}, "
          f"methods {list(config.methods)}; run dir {path}", flush=True)
    augment = data.augmentation_for(dataset.name) if config.get("augment") else None
    n, m, rules = config.n, config.m, _rules(config)
    methods = tuple(config.methods)
    rows: dict[str, dict] = {}
    histories: dict[str, dict] = {}
    x_te, y_te = dataset.test

    def fit(name, apply_fn, tx, state):
        """One resumable training run of ``name`` (skips nothing: a finished checkpoint
        restores the final state at once)."""
        trainer = train.Trainer(apply_fn, tx, batch_size=config.batch_size, augment=augment)
        return common.fit(trainer, state, dataset, config, tag=name, show_progress=show_progress,
                          checkpoint_dir=os.path.join(path, name, "ckpt"))

    def record(name, params, masks, apply_fn, fit_result=None, seconds=0.0, model_state=None):
        done = os.path.join(path, name, "result.json")
        if os.path.exists(done):
            saved = common.read_json(done)
            rows[name], hist = saved["row"], saved.get("history")
        else:
            sparse = params if masks is None else js.apply_masks(params, masks)
            ev = train.evaluate(apply_fn, sparse, x_te, y_te, model_state=model_state)
            nm_ok = None if masks is None else js.is_nm(sparse, n, m, rules=rules)
            density = 1.0 if masks is None else float(js.density(masks))
            es = None if fit_result is None else fit_result.early_stop
            rows[name] = dict(method=name, density=density, test_accuracy=ev["accuracy"],
                              test_loss=ev["loss"], nm_legal=nm_ok, seconds=seconds,
                              early_stop_step=None if es is None else es["step"],
                              early_stop_test_accuracy=None if es is None
                              else es["test_accuracy"])
            hist = None if fit_result is None else fit_result.history
            os.makedirs(os.path.dirname(done), exist_ok=True)
            common.write_json(done, {"row": rows[name], "history": hist})
        if hist is not None:
            histories[name] = hist
        if show_progress:
            print(f"  {name:<18} test accuracy {rows[name]['test_accuracy']:.4f}  "
                  f"({rows[name]['seconds']:.0f}s)", flush=True)

    k_model, k_data, _ = jax.random.split(jax.random.key(config.seed), 3)
    fn = common.build_model(config, dataset, key=k_model)
    tx = common.build_tx(config)
    state = train.init_state(fn.params, tx, key=k_data, model_state=fn.model_state)
    dense, seconds = fit("dense", fn.apply_fn, tx, state)
    dense_params, dense_ms = dense.state.params, dense.state.model_state
    record("dense", dense_params, None, fn.apply_fn, dense, seconds, dense_ms)

    masks = js.nm_masks(dense_params, n, m, rules=rules)
    if "one_shot" in methods:
        record("one_shot", dense_params, masks, fn.apply_fn, model_state=dense_ms)
    if "one_shot_finetune" in methods:
        if os.path.exists(os.path.join(path, "one_shot_finetune", "result.json")):
            record("one_shot_finetune", None, None, None)
        else:
            st = train.init_state(dense_params, tx, key=jax.random.key(config.seed + 1),
                                  model_state=dense_ms, masks=masks)
            ft, seconds = fit("one_shot_finetune", fn.apply_fn, tx, st)
            record("one_shot_finetune", ft.state.params, masks, fn.apply_fn, ft, seconds,
                   ft.state.model_state)
    for name, lam in (("sr_ste", config.lambda_w), ("ste", 0.0)):
        if name not in methods:
            continue
        if os.path.exists(os.path.join(path, name, "result.json")):
            record(name, None, None, None)
            continue

        def apply_sparse(params, model_state, x, *, train, key, lam=lam):
            return fn.apply_fn(js.nm.sr_ste(params, n, m, lambda_w=lam, rules=rules),
                               model_state, x, train=train, key=key)

        res, seconds = fit(name, apply_sparse, tx, state)
        final_masks = js.nm_masks(res.state.params, n, m, rules=rules)
        record(name, res.state.params, final_masks, fn.apply_fn, res, seconds,
               res.state.model_state)

    table = [rows[k] for k in METHODS if k in rows]
    results = {"config": common.to_dict(config), "dataset": repr(dataset),
               "data": common.data_summary(dataset), "rows": {r["method"]: r for r in table}}
    common.write_rows(os.path.join(path, "nm.csv"), table)
    from experiments import plots

    plots.curves_by_run(os.path.join(path, "curves.png"), histories, metric="val_accuracy",
                        title=f"{config.name}: {n}:{m}")
    common.write_json(os.path.join(path, "results.json"), results)
    print(format_table(results))
    print(f"wrote {path}/nm.csv, results.json, curves.png")
    return results


def format_table(results: dict) -> str:
    c = results["config"]
    head = ["method", "density", "test acc", "early-stop acc", "N:M legal"]
    body = []
    for name, r in results["rows"].items():
        es = r.get("early_stop_test_accuracy")
        body.append([name, f"{r['density']:.3f}", f"{r['test_accuracy']:.4f}",
                     "-" if es is None else f"{es:.4f}",
                     "-" if r["nm_legal"] is None else str(r["nm_legal"])])
    return (f"\n{c['name']}: {c['n']}:{c['m']} along the reduction axis, {c['num_steps']} "
            f"iterations per training run\n" + common.format_table(head, body))


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, population=False)
    return cli.main(p, argv, cli.runner(run), validate=validate, driver="nm")


if __name__ == "__main__":
    sys.exit(main())
