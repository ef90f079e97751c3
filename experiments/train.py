"""Train one model on one dataset from a config file, checkpointed and resumable.

    python -m experiments.train --config experiments/configs/train/lenet300_digits.py
    python -m experiments.train --config experiments/configs/train/lenet300_digits.py \\
        --dataset mnist --data-dir ~/data/mnist --set num_steps=50000

Writes ``<out>/<name>-<hash>/`` (the hash covers the hyperparameters and the data's content
hash): ``config.json``, ``data.json``, ``ckpt/`` (orbax checkpoints every
``checkpoint_every`` iterations: params, optimizer state, masks, step, data-order key, hook
state, metrics history), ``metrics.csv``, ``results.json`` (history, early-stop iteration and
the test accuracy there, final metrics, density) and ``curves.png``. Relaunching the same
command skips a finished run and resumes an interrupted one from its newest checkpoint; the
result is bitwise the same as a run that was never interrupted.

Config keys (see experiments/configs/train/lenet300_digits.py): dataset, data_dir, model,
model_kwargs, optimizer ("adam" | "sgd"), learning_rate, momentum, weight_decay,
lr_milestones (iterations where the learning rate is multiplied by lr_gamma), lr_gamma,
val_size (None = the default: see experiments.common.load_dataset), batch_size, num_steps,
eval_every, checkpoint_every, keep_checkpoints, seed, augment,
random_sparsity (layerwise random pruning at init; 0 = dense). Pruning during training
(GMP, SET, RigL, static ERK) is ``experiments/dst.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from experiments import cli, common

MODELS = common.MODELS


def build(config: Any, dataset: Any):
    """(functional model, tx, initial TrainState) of a config on a dataset."""
    import jax

    import jaxsparse
    from jaxsparse import train

    key = jax.random.key(config.seed)
    k_model, k_data, k_mask = jax.random.split(key, 3)
    fn = common.build_model(config, dataset, key=k_model)
    masks = jaxsparse.ones_like(fn.params)
    if config.get("random_sparsity", 0.0):
        scores = jaxsparse.scores.random(fn.params, key=k_mask)
        masks = jaxsparse.prune(scores, masks, sparsity=config.random_sparsity,
                                scope="layerwise")
    tx = common.build_tx(config)
    state = train.init_state(fn.params, tx, key=k_data, model_state=fn.model_state, masks=masks)
    return fn, tx, state


def validate(config: Any) -> None:
    cli.check_training(config)
    s = config.get("random_sparsity", 0.0)
    if not 0.0 <= float(s) < 1.0:
        raise cli.UsageError(f"config random_sparsity={s!r}: must be in [0, 1)")


def _pause_for_tests(step: int) -> None:
    # Fault injection for the kill/resume test: stop here (after the async save of `step`
    # was issued) and wait to be SIGKILLed from outside.
    target = os.environ.get("JAXSPARSE_PAUSE_AT_STEP")
    if target is not None and step == int(target):
        with open(os.environ["JAXSPARSE_PAUSE_FILE"], "w") as f:
            f.write(str(step))
        while True:
            signal.pause()


def run(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Runs (or resumes, or skips) the experiment; returns the results dict."""
    from jaxsparse import checkpoint as ckpt_lib
    from jaxsparse import data, train
    from jaxsparse import masks as masks_lib

    dataset = common.load_dataset(config)
    path = common.run_dir(out, config, dataset=dataset)
    if (done := common.finished_results(path)) is not None:
        return done
    results_path = os.path.join(path, "results.json")
    fn, tx, state = build(config, dataset)
    augment = data.augmentation_for(dataset.name) if config.get("augment") else None
    print(f"{config.name}: {dataset!r}, model {config.model}, "
          f"density {float(masks_lib.density(state.masks)):.4f}, run dir {path}")

    resume_from = ckpt_lib.latest_step(os.path.join(path, "ckpt")) or 0
    bar, bar_cb = (common.progress(config.num_steps, resume_from, config.name)
                   if show_progress else (None, None))

    def callback(step: int, record: dict) -> None:
        if bar_cb is not None:
            bar_cb(step, record)
        _pause_for_tests(step)

    t0 = time.perf_counter()
    result = train.fit(
        fn.apply_fn, tx, state, dataset, num_steps=config.num_steps,
        batch_size=config.batch_size, eval_every=config.eval_every, augment=augment,
        callback=callback, checkpoint_dir=os.path.join(path, "ckpt"),
        checkpoint_every=config.checkpoint_every, keep=config.get("keep_checkpoints", 2))
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    h = result.history
    results = {
        "config": common.to_dict(config),
        "dataset": repr(dataset),
        "data": common.data_summary(dataset),
        "early_stop": result.early_stop,
        "final": {m: h[m][-1] for m in train.METRIC_NAMES} | {"step": h["step"][-1]},
        "density": float(masks_lib.density(result.state.masks)),
        "history": h,
    }
    common.write_csv(os.path.join(path, "metrics.csv"), h)
    common.plot_curves(os.path.join(path, "curves.png"), h, title=config.name,
                       early_stop=result.early_stop.get("step"))
    # Wall time is not a result: kept out of results.json so reruns compare bitwise.
    common.write_json(os.path.join(path, "timing.json"),
                      {"seconds_this_launch": seconds, "resumed_from_step": resume_from})
    common.write_json(results_path, results)
    es, fin = result.early_stop, results["final"]
    print(f"done in {seconds:.1f}s: final test accuracy {fin['test_accuracy']:.4f}; early stop "
          f"at iteration {es['step']} (val loss {es['val_loss']:.4f}, test accuracy "
          f"{es['test_accuracy']:.4f}). Results: {results_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, population=False)
    return cli.main(p, argv, cli.runner(run), validate=validate, driver="train")


if __name__ == "__main__":
    sys.exit(main())
