"""Loss Change Allocation of a training run: which parameters, layers and inputs moved the loss.

    python -m experiments.lca --config experiments/configs/lan2019_lca_lenet300_mnist.py \\
        --data-file /path/mnist_subset_6k.npz
    python -m experiments.lca --config experiments/configs/lan2019_lca_conv_digits.py

Trains one model with the one trainer (``jaxsparse.train.Trainer``) and a
``jaxsparse.lca.recorder`` hook that allocates every iteration's change of the loss on a fixed
evaluation set (the whole training set, as in Lan et al. 2019, unless ``lca_eval_size`` says
otherwise) to the parameters, on device. Writes ``<out>/<name>-<hash>/``:

* ``results.json``: the telescoping check (Σ LCA vs L(θ_T) − L(θ_0) and its error), the
  fraction of parameters that help per iteration (mean / median / min / max, share of
  iterations above 50%), per-layer totals and the layers that hurt, the synchrony of the
  per-layer learning peaks against a shifted-peaks null, test accuracy;
* ``lca.npz``: per-iteration per-layer LCA, helping / hurting / in-force counts, per-iteration
  totals and exact loss changes, and the per-parameter sums of the first layer;
* ``fraction_helping.png``, ``per_layer.png``, ``peaks.png``, ``input_pixels.png`` (a fully
  connected first layer: the per-input-pixel LCA as an image), ``curves.png``.

Config keys: dataset, data_file (an ``.npz`` with ``images`` / ``labels``: a stratified
``train_size`` / ``test_size`` split), model, model_kwargs, optimizer, learning_rate, momentum,
batch_size, num_steps, eval_every, seed, lca_eval_size (``None``: the whole training set),
lca_eval_batch_size, substeps, unroll (conv models on CPU), first_layer (path of the kernel for
the input image). A finished run is skipped on relaunch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

from experiments import common


def npz_split(path: str, *, train_size: int, test_size: int, seed: int):
    """A stratified train / test split of an ``.npz`` with uint8 ``images`` and ``labels``.

    MNIST normalisation; no validation split. For the 6,000-digit MNIST subset: 5,000 / 1,000
    (a subset, NOT the official MNIST split).
    """
    from sklearn.model_selection import train_test_split

    from jaxsparse import data

    with np.load(os.path.expanduser(path)) as z:
        x, y = z["images"], z["labels"].astype(np.int32)
    if x.ndim == 3:
        x = x[..., None]
    if train_size + test_size > len(y):
        raise ValueError(f"{path} has {len(y)} examples, fewer than {train_size} + {test_size}")
    mean, std = data.NORMALISATION["mnist"]
    x = data.normalise(x, mean, std)
    tr, te = train_test_split(np.arange(len(y)), train_size=train_size, test_size=test_size,
                              stratify=y, random_state=seed)
    empty = data.Split(x[:0], y[:0])
    return data.Dataset("mnist_subset", data.Split(x[tr], y[tr]), empty,
                        data.Split(x[te], y[te]), 10, mean, std, source=os.path.abspath(path))


def load_dataset(config: Any):
    from jaxsparse import data

    if config.get("data_file"):
        return npz_split(config.data_file, train_size=config.train_size,
                         test_size=config.test_size, seed=config.seed)
    if config.dataset == "digits":
        return data.digits(seed=config.seed)
    return data.load(config.dataset, data_dir=config.get("data_dir"))


def build(config: Any, dataset: Any):
    """(functional model, optimizer) of the config: the shared builders of ``common``."""
    import jax

    fn = common.build_model(config, dataset, key=jax.random.key(config.seed))
    return fn, common.build_tx(config, masked=False)


def eval_set(config: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """The fixed LCA evaluation set: the training set, or a fixed random subset of it."""
    x, y = dataset.train.x, dataset.train.y
    size = config.get("lca_eval_size")
    if size is None or size >= len(y):
        return x, y
    idx = np.random.default_rng(config.seed).permutation(len(y))[:size]
    return x[idx], y[idx]


def summarise(res: Any) -> dict:
    """The numbers ``results.json`` reports (see the module docstring)."""
    from jaxsparse import lca

    frac = lca.fraction_helping(res)
    moving = lca.fraction_helping(res, exclude_zero=True)
    zero = 1.0 - (res.helping.sum(1) + res.hurting.sum(1)) / np.maximum(res.active.sum(1), 1)
    totals = lca.layer_totals(res)
    sync = lca.peak_synchrony(res.per_layer)
    by_layer = {name: lca.fraction_helping(res, name) for name in res.layers}
    return {
        "telescoping": {"sum_lca": res.total, "loss_start": res.loss_start,
                        "loss_end": res.loss_end, "loss_change": res.loss_end - res.loss_start,
                        "error": res.error, "relative_error": res.relative_error,
                        "max_per_iteration_error": float(np.max(np.abs(
                            res.per_iteration - res.loss_change)))},
        "fraction_helping": {"mean": float(frac.mean()), "median": float(np.median(frac)),
                             "min": float(frac.min()), "max": float(frac.max()),
                             "share_of_iterations_above_half": float((frac > 0.5).mean()),
                             "per_layer_mean": {k: float(v.mean()) for k, v in by_layer.items()},
                             "among_nonzero_lca": {"mean": float(moving.mean()),
                                                   "median": float(np.median(moving)),
                                                   "max": float(moving.max())},
                             "zero_lca_share_mean": float(zero.mean())},
        "layer_totals": totals,
        "hurting_layers": lca.hurting_layers(res),
        "fraction_of_loss_change_by_layer": {
            k: v / (res.loss_end - res.loss_start) for k, v in totals.items()},
        "peak_synchrony": {"mean_observed": sync["mean_observed"], "mean_null": sync["mean_null"],
                           "observed": sync["observed"].tolist(), "null": sync["null"].tolist(),
                           "peaks_per_layer": [int(p.size) for p in sync["peaks"]],
                           "definition": "fraction of a layer's learning peaks (local maxima "
                                         "of -LCA in its top 10% of iterations) with a peak of "
                                         "another layer within +-1 iteration; null: the other "
                                         "layer's peaks circularly shifted (200 draws)"},
    }


def plots(path: str, res: Any, config: Any, image_shape: tuple[int, ...] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxsparse import lca

    t = np.arange(res.steps)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(t, lca.fraction_helping(res), lw=0.8, label="all layers")
    ax.plot(t, lca.fraction_helping(res, exclude_zero=True), lw=0.8, color="k", alpha=0.6,
            label="all layers, among LCA != 0")
    for name in res.layers:
        ax.plot(t, lca.fraction_helping(res, name), lw=0.5, alpha=0.6, label=name)
    ax.axhline(0.5, color="k", ls="--", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("fraction of parameters helping (LCA < 0)")
    ax.set_title(f"{config.name}: parameters that help per iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(path, "fraction_helping.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, name in enumerate(res.layers):
        axes[0].plot(t, np.cumsum(res.per_layer[:, j]), label=name)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("cumulative LCA (loss change allocated)")
    axes[0].legend(fontsize=7)
    totals = lca.layer_totals(res)
    axes[1].bar(range(len(totals)), list(totals.values()),
                color=["C3" if v > 0 else "C0" for v in totals.values()])
    axes[1].set_xticks(range(len(totals)), list(totals), rotation=45, fontsize=7)
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set_ylabel("total LCA (> 0: the layer hurt)")
    fig.suptitle(f"{config.name}: per-layer LCA")
    fig.tight_layout()
    fig.savefig(os.path.join(path, "per_layer.png"), dpi=110)
    plt.close(fig)

    window = min(res.steps, 300)
    fig, axes = plt.subplots(len(res.layers), 1, figsize=(8, 1.2 * len(res.layers) + 1),
                             sharex=True, squeeze=False)
    for j, name in enumerate(res.layers):
        s = -res.per_layer[:window, j]
        peaks = lca.learning_peaks(res.per_layer[:, j])
        peaks = peaks[peaks < window]
        axes[j, 0].plot(np.arange(window), s, lw=0.7)
        axes[j, 0].plot(peaks, s[peaks], "r.", ms=4)
        axes[j, 0].set_ylabel(name, fontsize=7)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle("-LCA per layer (learning) and its peaks, first iterations")
    fig.tight_layout()
    fig.savefig(os.path.join(path, "peaks.png"), dpi=110)
    plt.close(fig)

    if image_shape is not None:
        img = lca.input_image(res, config.first_layer, image_shape)
        lim = float(np.abs(img).max())
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title("LCA per input pixel (first layer)\nblue: helped, red: hurt", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(os.path.join(path, "input_pixels.png"), dpi=110)
        plt.close(fig)


def run(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Runs (or skips) the experiment; returns the results dict."""
    import jax

    from jaxsparse import lca, rules, train

    path = common.run_dir(out, config)
    if (done := common.finished_results(path)) is not None:
        return done
    results_path = os.path.join(path, "results.json")
    dataset = load_dataset(config)
    fn, tx = build(config, dataset)
    x_eval, y_eval = eval_set(config, dataset)
    rec = lca.recorder(fn.apply_fn, (x_eval, y_eval), num_steps=config.num_steps,
                       substeps=config.substeps, eval_batch_size=config.lca_eval_batch_size)
    trainer = train.Trainer(fn.apply_fn, tx, batch_size=config.batch_size, hooks=[rec.hook],
                            unroll=config.get("unroll", 1))
    state = trainer.init_state(fn.params, key=jax.random.key(config.seed + 1),
                               model_state=fn.model_state)
    print(f"{config.name}: {dataset!r}, model {config.model}, LCA evaluation set "
          f"{len(y_eval)} examples, {config.num_steps} iterations, run dir {path}")
    bar, callback = (common.progress(config.num_steps, 0, config.name) if show_progress
                     else (None, None))
    t0 = time.perf_counter()
    result = trainer.fit(state, dataset, num_steps=config.num_steps,
                         eval_every=config.eval_every, callback=callback)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    res = lca.summarise(rec, result.state.hook_state[0])
    summary = summarise(res)
    h = result.history
    results = {"config": common.to_dict(config), "dataset": repr(dataset),
               "lca_eval_examples": int(len(y_eval)), "steps": res.steps,
               "final_test_accuracy": h["test_accuracy"][-1], "layers": list(res.layers),
               **summary}
    first = dict(rules.leaves_with_paths(res.per_param)).get(config.first_layer)
    np.savez(os.path.join(path, "lca.npz"), per_layer=res.per_layer,
             per_iteration=res.per_iteration, loss_change=res.loss_change,
             helping=res.helping, hurting=res.hurting, active=res.active,
             layers=np.array(res.layers), first_layer=np.asarray(first))
    common.write_csv(os.path.join(path, "metrics.csv"), h)
    common.plot_curves(os.path.join(path, "curves.png"), h, title=config.name)
    image = tuple(config.image_shape) if config.get("image_shape") else None
    plots(path, res, config, image)
    common.write_json(os.path.join(path, "timing.json"), {"seconds": seconds})
    common.write_json(results_path, results)
    tel, fh = summary["telescoping"], summary["fraction_helping"]
    print(f"done in {seconds:.0f}s: test accuracy {results['final_test_accuracy']:.4f}; "
          f"sum LCA {tel['sum_lca']:.5f} vs loss change {tel['loss_change']:.5f} (error "
          f"{tel['error']:.2e}); helping per iteration mean {fh['mean']:.3f} (max "
          f"{fh['max']:.3f}); layer totals {summary['layer_totals']}; hurting "
          f"{summary['hurting_layers']}. Results: {results_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="python file with get_config()")
    parser.add_argument("--data-file", help="an .npz with images/labels (the MNIST subset)")
    parser.add_argument("--out", default="runs", help="parent of the run directories")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (Python literal), repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = common.load_config(args.config)
    if args.data_file:
        config.data_file = os.path.abspath(os.path.expanduser(args.data_file))
    common.apply_overrides(config, args.set)
    run(config, args.out, show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
