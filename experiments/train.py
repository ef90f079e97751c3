"""Train one model on one dataset from a config file, checkpointed and resumable.

    python -m experiments.train --config experiments/configs/lenet300_digits.py
    python -m experiments.train --config experiments/configs/lenet300_digits.py \\
        --dataset mnist --data-dir ~/data/mnist --set num_steps=50000

Writes ``<out>/<name>-<hash>/``: ``config.json``, ``ckpt/`` (orbax checkpoints every
``checkpoint_every`` iterations: params, optimizer state, masks, step, data-order key, hook
state, metrics history), ``metrics.csv``, ``results.json`` (history, early-stop iteration and
the test accuracy there, final metrics, density) and ``curves.png``. Relaunching the same
command skips a finished run and resumes an interrupted one from its newest checkpoint; the
result is bitwise the same as a run that was never interrupted.

Config keys (see experiments/configs/lenet300_digits.py): dataset, data_dir, model,
model_kwargs, optimizer ("adam" | "sgd"), learning_rate, momentum, weight_decay,
lr_milestones (iterations where the learning rate is multiplied by lr_gamma), lr_gamma,
val_size (None = paper split), batch_size, num_steps, eval_every, checkpoint_every,
keep_checkpoints, seed, augment,
random_sparsity (layerwise random pruning at init; 0 = dense).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from experiments import common

MODELS = ("lenet300", "conv2", "conv4", "conv6", "resnet20", "vgg16")


def build_optimizer(config: Any):
    """optax optimizer of the config (schedule, weight decay), wrapped in ``jaxsparse.masked``."""
    import optax

    import jaxsparse

    lr = config.learning_rate
    milestones = [int(m) for m in config.get("lr_milestones", ()) or ()]
    if milestones:
        lr = optax.piecewise_constant_schedule(
            lr, {m: float(config.get("lr_gamma", 0.1)) for m in milestones})
    if config.optimizer == "adam":
        tx = optax.adam(lr)
    elif config.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=config.get("momentum", 0.0) or None)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r} (adam | sgd)")
    if config.get("weight_decay", 0.0):
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
    return jaxsparse.masked(tx)


def build(config: Any, dataset: Any):
    """(functional model, tx, initial TrainState) of a config on a dataset."""
    import jax

    import jaxsparse
    from jaxsparse import models, train

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; known: {MODELS}")
    kwargs = dict(config.get("model_kwargs", {}) or {})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    key = jax.random.key(config.seed)
    k_model, k_data, k_mask = jax.random.split(key, 3)
    model = getattr(models, config.model)(key=k_model, input_shape=dataset.input_shape,
                                          num_classes=dataset.num_classes, **kwargs)
    fn = models.functional(model)
    masks = jaxsparse.ones_like(fn.params)
    if config.get("random_sparsity", 0.0):
        scores = jaxsparse.scores.random(fn.params, key=k_mask)
        masks = jaxsparse.prune(scores, masks, sparsity=config.random_sparsity,
                                scope="layerwise")
    tx = build_optimizer(config)
    state = train.init_state(fn.params, tx, key=k_data, model_state=fn.model_state, masks=masks)
    return fn, tx, state


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
    from jaxsparse import data, train
    from jaxsparse import masks as masks_lib

    path = common.run_dir(out, config)
    results_path = os.path.join(path, "results.json")
    if common.is_finished(path):
        print(f"finished already: {results_path}")
        with open(results_path) as f:
            return json.load(f)
    dataset = data.load(config.dataset, data_dir=config.get("data_dir"),
                        val_size=config.get("val_size"))
    fn, tx, state = build(config, dataset)
    augment = data.augmentation_for(dataset.name) if config.get("augment") else None
    print(f"{config.name}: {dataset!r}, model {config.model}, "
          f"density {float(masks_lib.density(state.masks)):.4f}, run dir {path}")

    from jaxsparse import checkpoint as ckpt_lib

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="python file with get_config()")
    parser.add_argument("--dataset", help="override config.dataset (mnist, cifar10, digits...)")
    parser.add_argument("--data-dir", help="directory with raw files or a tfds data dir")
    parser.add_argument("--out", default="runs", help="parent of the run directories")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (Python literal), repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = common.load_config(args.config)
    if args.dataset:
        config.dataset = args.dataset
    if args.data_dir:
        config.data_dir = os.path.expanduser(args.data_dir)
    common.apply_overrides(config, args.set)
    run(config, args.out, show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
