"""Supermasks: learned (Bernoulli) supermasks, edge-popup, and supermasks at initialisation.

    python -m experiments.supermask --config experiments/configs/supermask/digits_supermask.py
    python -m experiments.supermask --config experiments/configs/supermask/digits_edgepopup.py
    python -m experiments.supermask \\
        --config experiments/configs/supermask/digits_supermask_at_init.py
    python -m experiments.supermask \\
        --config experiments/configs/supermask/zhou2019_supermask_fc.py \\
        --data-file /path/mnist_subset_6k.npz

``config.method`` (or ``--mode``) picks what runs:

* ``"learned"`` (Zhou et al. 2019): frozen weights (``weights``: ``"init"`` or
  ``"signed_constant"``), a logit per weight, Bernoulli masks sampled in the forward pass,
  optional dynamic rescaling (``rescale``). Evaluated with sampled masks (the paper) and with
  the deterministic expected mask ``sigmoid(s) > 0.5``.
* ``"edge_popup"`` (Ramanujan et al. 2020): top-k of ``|score|`` per layer, ``density`` = k =
  the fraction KEPT; frozen signed Kaiming constant (or ``"kaiming_normal"``) weights.
* ``"at_init"`` (Zhou et al. 2019): trains the dense network once, then for every criterion x
  density applies the one-shot layerwise mask of ``criterion(init, final)`` to the untrained
  initial weights (and, with ``signed_constant``, to ``sign(w_init) * std(layer)``) and
  evaluates it. Plots accuracy at init against density (``at_init.png``).

The configs keep the papers' word, ``density`` / ``densities`` (k, the fraction KEPT); the
library speaks sparsity (the fraction pruned), and this driver converts at its boundary:
``sparsity = 1 - density`` (:func:`sparsity_of`).

No weight is ever trained in ``learned`` / ``edge_popup``: the run asserts the frozen weights
are bitwise unchanged at the end. Output ``<out>/<name>-<hash>/``: ``results.json``,
``metrics.csv``, ``curves.png`` (training) or ``at_init.csv`` / ``at_init.png`` (sweep), and
``export/`` (the found subnetwork as dense-with-zeros params + bool masks:
``params.npz`` / ``masks.npz`` written by ``jaxsparse.checkpoint.save_tree``, one entry per
leaf path, e.g. ``np.load("export/masks.npz")["fc0/kernel"]``; read back as a tree with
``checkpoint.load_tree(path, like=params)``).

Population mode (``learned`` / ``edge_popup``), ``config.replicates > 1`` or ``--replicates N``:
the N replicates train as ONE population (``jaxsparse.train.Trainer`` on the stacked state:
every chunk and evaluation is one compiled program over all of them, sharded over every
device; on a CPU-only machine one device per core, ``--cpu-devices``), checkpointed and
resumable.
Replicate i's keys (model init, supermask init, data order) come from
``fold_in(key(seed), i)``, so they do not depend on N. ``results.json`` then holds
per-replicate lists with their mean and sample std (``*_std``: ddof 1, the one spread of
every driver, ``results["spread"]``), ``replicates.csv`` one row per replicate,
``metrics.csv`` / ``curves.png`` the mean (and sample std) over replicates, and ``export/``
replicate 0's subnetwork. The run directory's hash includes the data's content hash.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import numpy as np

from experiments import cli, common

METHODS = ("learned", "edge_popup", "at_init")


def build_optimizer(config: Any, num_steps: int):
    """SGD (momentum) / Adam with a constant or cosine learning rate and weight decay.

    ``common.build_tx`` unmasked: the trainable params are the scores, and the weight decay
    applies to them, as in edge-popup.
    """
    return common.build_tx(config, masked=False, num_steps=num_steps)


def sparsity_of(density: float) -> float:
    """The library's sparsity (fraction pruned) of a config's ``density`` (fraction kept)."""
    return 1.0 - float(density)


def build_supermask(config: Any, apply_fn):
    from jaxsparse import supermask

    common_kw = dict(weights=config.weights, score_init=config.score_init,
                     score_scale=config.get("score_scale", 1.0), rescale=config.rescale,
                     train_other=config.get("train_other", False))
    if config.method == "learned":
        return supermask.learned_supermask(apply_fn, **common_kw)
    return supermask.edge_popup(apply_fn, sparsity_of(config.density), **common_kw)


def save_export(path: str, params: Any, masks: Any) -> None:
    """The found subnetwork: ``path/params.npz`` and ``path/masks.npz`` (one entry per leaf)."""
    from jaxsparse import checkpoint

    checkpoint.save_tree(os.path.join(path, "params.npz"), params)
    checkpoint.save_tree(os.path.join(path, "masks.npz"), masks)


def validate(config: Any) -> None:
    """Checks that need no training (UsageError naming the key and value)."""
    if config.method not in METHODS:
        raise cli.UsageError(f"config method={config.method!r}: expected one of {METHODS}")
    cli.check_training(config)
    r = config.get("replicates", 1)
    if not isinstance(r, int) or r < 1:
        raise cli.UsageError(f"config replicates={r!r}: must be an integer >= 1")
    if config.method == "at_init":
        if r > 1:
            raise cli.UsageError("replicates > 1 is for the learned / edge_popup methods, not "
                                 "at_init")
        for d in config.densities:
            if not 0.0 < float(d) <= 1.0:
                raise cli.UsageError(f"config densities: {d!r} is not a density in (0, 1]")
        return
    if config.method == "edge_popup" and not 0.0 <= float(config.density) <= 1.0:
        raise cli.UsageError(f"config density={config.density!r}: the fraction of each layer "
                             "KEPT must be in [0, 1]")
    try:
        build_supermask(config, lambda *a, **k: None)
    except (ValueError, TypeError) as e:
        raise cli.UsageError(f"config (method={config.method!r}, weights={config.weights!r}, "
                             f"score_init={config.score_init!r}, density={config.density!r}): "
                             f"{e}") from None


def run_training(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Learned supermask or edge-popup training; returns the results dict.

    With ``config.replicates > 1``: :func:`run_population` (the replicates as one population).
    """
    dataset = common.load_dataset(config)
    path = common.run_dir(out, config, dataset=dataset)
    if (done := common.finished_results(path)) is not None:
        return done
    if int(config.get("replicates", 1)) > 1:
        return run_population(config, out, show_progress=show_progress, dataset=dataset)
    import jax

    from jaxsparse import masks as masks_lib
    from jaxsparse import train

    fn = common.build_model(config, dataset)
    k_model, k_sm, k_data = jax.random.split(jax.random.key(config.seed), 3)
    params, model_state = fn.init_fn(k_model)
    sm = build_supermask(config, fn.apply_fn)
    sm_params, sm_state = sm.init(params, model_state, key=k_sm)
    frozen0 = jax.tree.map(np.array, sm_state["weights"])
    tx = build_optimizer(config, config.num_steps)
    state = train.init_state(sm_params, tx, key=k_data, model_state=sm_state)
    print(f"{config.name}: {dataset!r}, model {config.model}, method {config.method}, "
          f"run dir {path}")
    bar, bar_cb = (common.progress(config.num_steps, 0, config.name) if show_progress
                   else (None, None))
    t0 = time.perf_counter()
    result = train.fit(sm.apply, tx, state, dataset, num_steps=config.num_steps,
                       batch_size=config.batch_size, eval_every=config.eval_every,
                       callback=bar_cb, checkpoint_dir=os.path.join(path, "ckpt"),
                       checkpoint_every=config.get("checkpoint_every", config.eval_every))
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    st = result.state
    same = all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(
        jax.tree.leaves(frozen0), jax.tree.leaves(st.model_state["weights"]), strict=True))
    if not same:
        raise AssertionError("frozen weights changed during supermask training")
    h = result.history
    final = {m: h[m][-1] for m in train.METRIC_NAMES}
    results = {"config": common.to_dict(config), "dataset": repr(dataset), "final": final,
               "data": common.data_summary(dataset),
               "early_stop": result.early_stop, "weights_unchanged": same, "history": h}
    x_te, y_te = dataset.test
    if config.method == "learned":
        det = functools.partial(sm.apply, deterministic=True)
        results["expected_mask_test_accuracy"] = train.evaluate(
            det, st.params, x_te, y_te, model_state=st.model_state)["accuracy"]
    dense_params, masks = sm.export(st.params, st.model_state)
    results["density"] = float(masks_lib.density(masks))
    results["density_report"] = masks_lib.report(masks).as_dicts()
    results["compact"] = masks_lib.compact_report(masks)
    save_export(os.path.join(path, "export"), dense_params, masks)
    common.write_csv(os.path.join(path, "metrics.csv"), h)
    common.plot_curves(os.path.join(path, "curves.png"), h, title=config.name)
    common.write_json(os.path.join(path, "timing.json"), {"seconds": seconds})
    common.write_json(os.path.join(path, "results.json"), results)
    msg = f"done in {seconds:.1f}s: test accuracy {final['test_accuracy']:.4f}"
    if "expected_mask_test_accuracy" in results:
        msg += f" (expected mask {results['expected_mask_test_accuracy']:.4f})"
    print(f"{msg}, mask density {results['density']:.4f}, weights bitwise unchanged; "
          f"{results['compact']['removable']}/{results['compact']['hidden_units']} hidden "
          f"units removable. Results: {os.path.join(path, 'results.json')}")
    return results


# ---------------------------------------------------------------------------------------
# Population mode: the replicates trained as one population.


def replicate_keys(seed: int, replicates: int):
    """``[replicates, 3]`` keys (model init, supermask init, data order), one row per replicate.

    Row i is ``split(fold_in(key(seed), i), 3)``: it does not depend on ``replicates``.
    """
    import jax
    import jax.numpy as jnp

    root = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.split(jax.random.fold_in(root, i), 3))(
        jnp.arange(replicates, dtype=jnp.uint32))


def init_member(fn, sm, tx, keys):
    """One replicate's ``TrainState`` from its three keys (vmappable over ``keys``)."""
    from jaxsparse import train

    params, model_state = fn.init_fn(keys[0])
    sm_params, sm_state = sm.init(params, model_state, key=keys[1])
    return train.init_state(sm_params, tx, key=keys[2], model_state=sm_state)


_mean_std = common.mean_std  # mean and sample std (ddof 1): the one spread of every driver


def run_population(config: Any, out: str, *, show_progress: bool = True,
                   dataset: Any = None) -> dict:
    """Trains ``config.replicates`` supermasks as one population; returns the results dict.

    Every value of ``results.json`` that differs between replicates is a per-replicate list
    (``history[metric]``: one list of per-replicate values per evaluation), with ``*_mean`` /
    ``*_std`` beside it; ``density_report`` / ``compact`` and ``export/`` are replicate 0's.
    Raises if any replicate's frozen weights changed.
    """
    import jax

    from jaxsparse import lottery, train
    from jaxsparse import masks as masks_lib
    from jaxsparse.population import population_map, take_member

    R = int(config.get("replicates", 1))
    dataset = common.load_dataset(config) if dataset is None else dataset
    path = common.run_dir(out, config, dataset=dataset)
    fn = common.build_model(config, dataset)
    sm = build_supermask(config, fn.apply_fn)
    tx = build_optimizer(config, config.num_steps)
    # One compiled program (op-by-op, the vmapped init would compile every primitive).
    state = jax.jit(jax.vmap(functools.partial(init_member, fn, sm, tx)))(
        replicate_keys(config.seed, R))
    frozen0 = [np.asarray(a).copy() for a in jax.tree.leaves(state.model_state["weights"])]
    if show_progress:
        print(f"{config.name}: {dataset!r}, model {config.model}, method {config.method}, "
              f"{R} replicates as one population over {jax.device_count()} "
              f"{jax.default_backend()} devices, run dir {path}", flush=True)
    bar, bar_cb = (common.progress(config.num_steps, 0, config.name) if show_progress
                   else (None, None))
    t0 = time.perf_counter()
    out = train.Trainer(sm.apply, tx, batch_size=config.batch_size).fit(
        state, dataset, num_steps=config.num_steps, eval_every=config.eval_every,
        callback=bar_cb, checkpoint_dir=os.path.join(path, "ckpt"),
        checkpoint_every=config.get("checkpoint_every", config.eval_every))
    if bar is not None:
        bar.close()
    state, h = out.state, out.history
    seconds = time.perf_counter() - t0
    final_w = [np.asarray(a) for a in jax.tree.leaves(state.model_state["weights"])]
    changed = [r for r in range(R) if not all(
        a[r].tobytes() == b[r].tobytes() for a, b in zip(frozen0, final_w, strict=True))]
    if changed:
        raise AssertionError(f"frozen weights changed during supermask training "
                             f"(replicates {changed})")
    names = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
    final = {m: h[m][-1] for m in names}
    results = {"config": common.to_dict(config), "dataset": repr(dataset), "replicates": R,
               "data": common.data_summary(dataset), "spread": common.SPREAD,
               "final": final,
               "final_mean": {m: _mean_std(v)[0] for m, v in final.items()},
               "final_std": {m: _mean_std(v)[1] for m, v in final.items()},
               "early_stop": lottery.summarise(h), "weights_unchanged": True}
    x_te, y_te = dataset.test
    if config.method == "learned":
        det = functools.partial(sm.apply, deterministic=True)
        acc = population_map(train.make_eval(det), in_axes=(0, 0, 0, None, None))(
            state.params, state.model_state, state.masks, x_te, y_te)["accuracy"]
        em = [float(v) for v in jax.device_get(acc)]
        results["expected_mask_test_accuracy"] = em
        (results["expected_mask_test_accuracy_mean"],
         results["expected_mask_test_accuracy_std"]) = _mean_std(em)
    dense_params, masks = jax.jit(jax.vmap(sm.export))(state.params, state.model_state)
    dense_params, masks = jax.device_get((dense_params, masks))
    results["density"] = [float(masks_lib.density(take_member(masks, r))) for r in range(R)]
    results["density_mean"], results["density_std"] = _mean_std(results["density"])
    masks0 = take_member(masks, 0)
    results["density_report"] = masks_lib.report(masks0).as_dicts()  # replicate 0
    results["compact"] = masks_lib.compact_report(masks0)  # replicate 0
    results["history"] = h
    save_export(os.path.join(path, "export"), take_member(dense_params, 0), masks0)
    rows = {"replicate": list(range(R)), "density": results["density"],
            **{f"final_{m}": final[m] for m in names},
            **{k: v for k, v in results["early_stop"].items() if k != "final_test_accuracy"}}
    if "expected_mask_test_accuracy" in results:
        rows["expected_mask_test_accuracy"] = results["expected_mask_test_accuracy"]
    common.write_csv(os.path.join(path, "replicates.csv"), rows)
    curves = {"step": h["step"]}
    for m in names:
        curves[f"{m}_mean"] = [_mean_std(v)[0] for v in h[m]]
        curves[f"{m}_sample_std"] = [_mean_std(v)[1] for v in h[m]]
    common.write_csv(os.path.join(path, "metrics.csv"), curves)
    common.plot_curves(os.path.join(path, "curves.png"), h,
                       title=f"{config.name} ({R} replicates)")
    common.write_json(os.path.join(path, "timing.json"), {"seconds": seconds, "replicates": R})
    common.write_json(os.path.join(path, "results.json"), results)
    fm, fs = results["final_mean"]["test_accuracy"], results["final_std"]["test_accuracy"]
    msg = f"done in {seconds:.1f}s: {R} replicates, test accuracy {fm:.4f} ± {fs:.4f}"
    if "expected_mask_test_accuracy" in results:
        msg += (f" (expected mask {results['expected_mask_test_accuracy_mean']:.4f} ± "
                f"{results['expected_mask_test_accuracy_std']:.4f})")
    print(f"{msg}, mask density {results['density_mean']:.4f}, weights bitwise unchanged in "
          f"every replicate. Results: {os.path.join(path, 'results.json')}")
    return results


def run_at_init(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Trains the dense net, then sweeps criterion x density of supermasks at init."""
    import jax

    from jaxsparse import supermask, train

    dataset = common.load_dataset(config)
    path = common.run_dir(out, config, dataset=dataset)
    if (done := common.finished_results(path)) is not None:
        return done
    fn = common.build_model(config, dataset)
    k_model, k_data, k_rand = jax.random.split(jax.random.key(config.seed), 3)
    init_params, model_state = fn.init_fn(k_model)
    tx = build_optimizer(config, config.num_steps)
    state = train.init_state(init_params, tx, key=k_data, model_state=model_state)
    print(f"{config.name}: training the dense {config.model} on {dataset!r} ({path})")
    bar, bar_cb = (common.progress(config.num_steps, 0, config.name) if show_progress
                   else (None, None))
    result = train.fit(fn.apply_fn, tx, state, dataset, num_steps=config.num_steps,
                       batch_size=config.batch_size, eval_every=config.eval_every,
                       callback=bar_cb, checkpoint_dir=os.path.join(path, "ckpt"),
                       checkpoint_every=config.get("checkpoint_every", config.eval_every))
    if bar is not None:
        bar.close()
    final = result.state.params
    x_te, y_te = dataset.test
    evaluate = jax.jit(train.make_eval(fn.apply_fn))
    acc = lambda p: float(evaluate(p, model_state, jax.tree.map(  # noqa: E731
        lambda _: np.bool_(True), p), x_te, y_te)["accuracy"])
    dense = result.history["test_accuracy"][-1]
    rows = []
    for criterion in config.criteria:
        for density in config.densities:
            for signed in config.signed_constant:
                params, _ = supermask.at_init(
                    init_params, final, sparsity=sparsity_of(density), criterion=criterion,
                    signed_constant=signed, scope=config.scope, key=k_rand)
                rows.append({"criterion": criterion, "density": density,
                             "signed_constant": bool(signed), "test_accuracy": acc(params)})
                if show_progress:
                    print(f"  {criterion:28s} density {density:<6} "
                          f"{'signed const' if signed else 'init        '} "
                          f"{rows[-1]['test_accuracy']:.4f}")
    table = {k: [r[k] for r in rows] for k in rows[0]}
    common.write_csv(os.path.join(path, "at_init.csv"), table)
    plot_at_init(os.path.join(path, "at_init.png"), rows, dense=dense, title=config.name)
    results = {"config": common.to_dict(config), "dataset": repr(dataset),
               "data": common.data_summary(dataset), "dense_test_accuracy": dense,
               "at_init": rows}
    common.write_json(os.path.join(path, "results.json"), results)
    print(f"dense {dense:.4f}; table {os.path.join(path, 'at_init.csv')}, plot "
          f"{os.path.join(path, 'at_init.png')}")
    return results


def plot_at_init(path: str, rows: list[dict], *, dense: float, title: str = "") -> None:
    """Accuracy at init against density, one line per criterion (dashed: signed constant)."""
    fig, ax = common.subplots(figsize=(7, 4.5))
    crits = list(dict.fromkeys(r["criterion"] for r in rows))
    colors = [f"C{i}" for i in range(10)]  # the default colour cycle
    for i, c in enumerate(crits):
        for signed, ls in ((False, "-"), (True, "--")):
            pts = sorted((r["density"], r["test_accuracy"]) for r in rows
                         if r["criterion"] == c and r["signed_constant"] == signed)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, ls, marker="o", color=colors[i % len(colors)],
                        label=f"{c}{' (signed const)' if signed else ''}")
    ax.axhline(dense, color="black", lw=0.8, label="dense, trained")
    ax.axhline(0.1, color="gray", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log")
    ticks = sorted({r["density"] for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_ylabel("test accuracy at init (no training)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--mode", choices=METHODS, help="override config.method")
    p.add_argument("--replicates", type=int,
                   help="override config.replicates (> 1: one population, learned / edge_popup)")

    def prepare(config: Any, args) -> None:
        # `replicates` is optional in the supermask configs (absent = 1): add it only when
        # asked for, so a single-model run keeps its run directory (the hash covers every key).
        if args.replicates is not None and (args.replicates != 1 or "replicates" in config):
            config.replicates = args.replicates
        if args.mode:
            config.method = args.mode

    def run(config: Any, args) -> None:
        fn = run_at_init if config.method == "at_init" else run_training
        fn(config, args.out, show_progress=not args.quiet)

    return cli.main(p, argv, run, validate=validate, prepare=prepare,
                    optional={"replicates": (int,)},
                    members=lambda config, args: int(config.get("replicates", 1)),
                    driver="supermask")


if __name__ == "__main__":
    sys.exit(main())
