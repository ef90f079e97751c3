"""Forget-and-relearn generations (LLF, KE) vs the same number of plain training steps.

    python -m experiments.relearn --config experiments/configs/relearn/zhou2022_llf_digits.py
    python -m experiments.relearn --config experiments/configs/relearn/zhou2022_ke_digits.py

Injects label noise into a fixed fraction of the training set (``jaxsparse.relearn.
inject_label_noise``), then runs ``jaxsparse.relearn.generations`` twice over the one trainer:
with the config's forgetting operator between generations, and with ``forget=None`` (ONE
continued plain run of the same total number of iterations, read at the same boundaries).
Writes ``<out>/<name>-<hash>/``:

* ``results.json`` / ``table.txt``: per generation and run, test accuracy, training accuracy
  on clean examples and on the noisy ones (fitting their *noisy* labels = memorisation; and
  against their true labels), and right after each forgetting step the accuracy of each group
  and the share of the fitted examples of each group that forgetting undid;
* ``records/``: per-example training-set logits of every generation (and right after each
  forgetting step), the Parquet record of ``jaxsparse.forgetting.records``
  (``relearn.write_records``), plus ``noise.npz`` (the noisy mask and the true labels);
* ``generations.png``: test accuracy and clean / noisy training accuracy per generation.

Config keys: dataset (``digits``), model, model_kwargs, optimizer, learning_rate,
batch_size, steps_per_generation, generations, eval_every, label_noise (fraction of the
training set relabelled), method (``"llf"``: ``llf_from``; ``"ke"``: ``ke_fraction``,
``ke_mode``, ``ke_axes``), seed. A finished run is skipped on relaunch.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from experiments import cli, common


def forget_op(config: Any):
    """The config's forgetting operator."""
    import jax

    from jaxsparse import relearn

    if config.method == "llf":
        return relearn.later_layers(config.llf_from)
    if config.method == "ke":
        axes = config.ke_axes
        axes = [(p, tuple(a)) for p, a in axes] if axes and not isinstance(axes[0], int) else (
            tuple(axes))
        return relearn.knowledge_evolution(config.ke_fraction, mode=config.ke_mode, axes=axes,
                                           mask_key=jax.random.key(config.seed + 7))
    raise ValueError(f"unknown method {config.method!r} (llf | ke)")


def build(config: Any, dataset: Any):
    """(functional model, optimizer) of the config: the shared builders of ``common``."""
    import jax

    fn = common.build_model(config, dataset, key=jax.random.key(config.seed))
    return fn, common.build_tx(config, masked=False)


COLUMNS = ("generation", "step", "test_accuracy", "clean_accuracy", "noisy_accuracy",
           "noisy_true_accuracy", "clean_accuracy_after_forget", "noisy_accuracy_after_forget",
           "forgotten_clean", "forgotten_noisy")


def plot(path: str, tables: dict[str, list[dict]], title: str) -> None:

    fig, axes = common.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, table) in enumerate(tables.items()):
        g = [r["generation"] for r in table]
        axes[0].plot(g, [r["test_accuracy"] for r in table], marker="o", color=f"C{i}",
                     label=name)
        axes[1].plot(g, [r["clean_accuracy"] for r in table], marker="o", color=f"C{i}",
                     label=f"{name}: clean (train)")
        axes[1].plot(g, [r["noisy_accuracy"] for r in table], marker="s", ls="--",
                     color=f"C{i}", label=f"{name}: noisy, fits noisy label")
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("training accuracy (end of generation)")
    for ax in axes:
        ax.set_xlabel("generation (same iterations for both runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    common.save_figure(fig, path)


def run(config: Any, out: str) -> dict:
    """Runs (or skips) the experiment; returns the results dict."""
    import jax

    from jaxsparse import data, relearn

    path = common.run_dir(out, config)
    if (done := common.finished_results(path)) is not None:
        return done
    results_path = os.path.join(path, "results.json")
    if config.dataset != "digits":
        raise ValueError(f"this driver runs the offline digits data, got {config.dataset!r}")
    ds = data.digits(seed=config.seed)
    fn, tx = build(config, ds)
    y_noisy, noisy = relearn.inject_label_noise(ds.train.y, config.label_noise,
                                                num_classes=ds.num_classes,
                                                key=jax.random.key(config.seed + 3))
    noisy = np.asarray(noisy)
    d = {"train": (ds.train.x, np.asarray(y_noisy)), "val": ds.val, "test": ds.test}
    init_fn = lambda key: fn.init_fn(key)[0]  # noqa: E731
    common_kw = dict(num_generations=config.generations, num_steps=config.steps_per_generation,
                     batch_size=config.batch_size, eval_every=config.eval_every,
                     key=jax.random.key(config.seed + 1), init_fn=init_fn,
                     model_state=fn.model_state, noisy=noisy, true_labels=ds.train.y)
    t0 = time.perf_counter()
    runs = {}
    for name, forget in ((config.method, forget_op(config)), ("plain", None)):
        runs[name] = relearn.generations(fn.apply_fn, tx, fn.params, d, forget=forget,
                                         **common_kw)
        print(f"\n{name}:\n" + relearn.table_text(runs[name].table, COLUMNS))
    seconds = time.perf_counter() - t0
    records = os.path.join(path, "records")
    try:
        for name, res in runs.items():
            relearn.write_records(records, res, name=name)
        records_note = "Parquet (jaxsparse.forgetting.records)"
    except ImportError:  # pyarrow missing: per-example logits as npz instead
        for name, res in runs.items():
            np.savez(os.path.join(path, f"{name}_logits.npz"), logits=res.logits,
                     logits_after_forget=res.logits_after_forget, labels=res.labels)
        records_note = "npz (pyarrow not installed)"
    np.savez(os.path.join(path, "noise.npz"), noisy=noisy, true_labels=ds.train.y,
             noisy_labels=np.asarray(y_noisy))
    tables = {name: res.table for name, res in runs.items()}
    with open(os.path.join(path, "table.txt"), "w") as f:
        for name, table in tables.items():
            f.write(f"{name}\n{relearn.table_text(table, COLUMNS)}\n\n")
    plot(os.path.join(path, "generations.png"), tables,
         f"{config.name}: {config.label_noise:.0%} label noise on digits")
    results = {"config": common.to_dict(config), "noisy_examples": int(noisy.sum()),
               "train_examples": int(noisy.size), "tables": tables, "records": records_note}
    common.write_json(os.path.join(path, "timing.json"), {"seconds": seconds})
    common.write_json(results_path, results)
    print(f"done in {seconds:.0f}s. Results: {results_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    return cli.main(cli.parser(__doc__, population=False), argv,
                    lambda config, args: run(config, args.out), driver="relearn")


if __name__ == "__main__":
    sys.exit(main())
