"""Loss Change Allocation of a training run: which parameters, layers and inputs moved the loss.

    python -m experiments.lca --config experiments/configs/lca/lan2019_lca_lenet300_mnist.py \\
        --data-file /path/mnist_subset_6k.npz
    python -m experiments.lca --config experiments/configs/lca/lan2019_lca_conv_digits.py

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

Config keys: the data keys of ``experiments.common.load_dataset`` (``dataset``, ``data_file``,
``test_size``, ``val_size``: Lan et al. train on everything but the test split, so
``val_size=0``), model, model_kwargs, optimizer, learning_rate, momentum,
batch_size, num_steps, eval_every, seed, lca_eval_size (``None``: the whole training set),
lca_eval_batch_size, substeps, unroll (conv models on CPU), first_layer (path of the kernel for
the input image). A finished run is skipped on relaunch.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from experiments import cli, common


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

    from jaxsparse import lca

    t = np.arange(res.steps)
    fig, ax = common.subplots(figsize=(7, 3.6))
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
    common.save_figure(fig, os.path.join(path, "fraction_helping.png"))

    fig, axes = common.subplots(1, 2, figsize=(10, 3.6))
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
    common.save_figure(fig, os.path.join(path, "per_layer.png"))

    window = min(res.steps, 300)
    fig, axes = common.subplots(len(res.layers), 1, figsize=(8, 1.2 * len(res.layers) + 1),
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
    common.save_figure(fig, os.path.join(path, "peaks.png"))

    if image_shape is not None:
        img = lca.input_image(res, config.first_layer, image_shape)
        lim = float(np.abs(img).max())
        fig, ax = common.subplots(figsize=(4.2, 3.6))
        im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title("LCA per input pixel (first layer)\nblue: helped, red: hurt", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax)
        common.save_figure(fig, os.path.join(path, "input_pixels.png"))


def run(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Runs (or skips) the experiment; returns the results dict."""
    import jax

    from jaxsparse import lca, rules, train

    path = common.run_dir(out, config)
    if (done := common.finished_results(path)) is not None:
        return done
    results_path = os.path.join(path, "results.json")
    dataset = common.load_dataset(config)
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
    return cli.main(cli.parser(__doc__, population=False), argv, cli.runner(run), driver="lca")


if __name__ == "__main__":
    sys.exit(main())
