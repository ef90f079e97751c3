"""One-shot pruning of a small GPT with calibration data: magnitude, Wanda, SparseGPT, OWL.

    python -m experiments.oneshot --config experiments/configs/oneshot/oneshot_stdlib.py
    python -m experiments.oneshot --config experiments/configs/oneshot/oneshot_stdlib.py \\
        --set num_steps=100 --set sweep=()        # a quick look

1. Trains ``jaxsparse.models.transformer.gpt`` on the standard-library corpus
   (``jaxsparse.textdata.stdlib``) with the one trainer (``train.fit``, next-byte loss,
   checkpointed: a relaunch resumes, a finished run is skipped).
2. Validation perplexity of the dense model, then of every (method, setting) of the config:
   ``jaxsparse.oneshot.prune`` sequentially block by block with calibration windows from the
   training split; OWL through ``jaxsparse.oneshot.owl``. Every N:M result is checked with
   ``jaxsparse.is_nm`` and one kernel of it goes through ``jaxsparse.nm.compress`` /
   ``decompress`` bit-exactly.
3. Per-layer reconstruction errors ``||X W - X W_hat||_F / ||X W||_F`` on each method's own
   calibration inputs, and a sparsity sweep for the plot.

Writes ``<out>/<name>-<hash>/``: ``results.json``, ``results.csv`` (one row per pruned
model), ``layers.csv`` (one row per pruned kernel), ``table.md`` and
``ppl_vs_sparsity.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any

from experiments import cli, common

METHODS = ("magnitude", "wanda", "sparsegpt")


def _setting(text: str) -> dict:
    """``"0.5"`` -> unstructured 50%; ``"2:4"`` -> N:M (parsed here, not in the library)."""
    import jaxsparse as js

    try:
        if ":" in text:
            n, m = (int(v) for v in text.split(":"))
            return {"structure": js.NM(n, m)}
        s = float(text)
    except (TypeError, ValueError) as e:
        raise cli.UsageError(f"config settings: {text!r} is neither a sparsity such as '0.5' "
                             f"nor n:m such as '2:4' ({e})") from None
    if not 0.0 <= s <= 1.0:
        raise cli.UsageError(f"config settings: sparsity {text!r} is not in [0, 1]")
    return {"sparsity": s}


def _method(name: str, config: Any):
    from jaxsparse import oneshot

    table = {"magnitude": oneshot.Magnitude(), "wanda": oneshot.Wanda(),
             "sparsegpt": oneshot.SparseGPT(blocksize=config.blocksize,
                                            percdamp=config.percdamp)}
    return table[name]


def validate(config: Any) -> None:
    """Sizes, methods, settings, OWL and sweep values, before any JAX work (UsageError)."""
    cli.positive(config, "d_model", "num_layers", "num_heads", "d_ff", "seq_len",
                 "train_windows", "num_steps", "batch_size", "eval_every", "val_windows",
                 "calib_sequences", "calib_batch", "blocksize")
    if config.d_model % config.num_heads:
        raise cli.UsageError(f"config d_model={config.d_model} is not divisible by "
                             f"num_heads={config.num_heads}")
    if config.calib_sequences % config.calib_batch:
        raise cli.UsageError(f"config calib_sequences={config.calib_sequences} is not a "
                             f"multiple of calib_batch={config.calib_batch}")
    for key in ("methods", "owl_methods"):
        unknown = [x for x in config[key] if x not in METHODS]
        if unknown:
            raise cli.UsageError(f"config {key}={list(config[key])!r}: unknown {unknown}; "
                                 f"expected some of {list(METHODS)}")
    for text in config.settings:
        _setting(text)
    s, lam = float(config.owl_sparsity), float(config.owl_lam)
    if not 0.0 <= lam <= min(s, 1.0 - s):
        raise cli.UsageError(f"config owl_lam={lam} must be in [0, min(owl_sparsity, 1 - "
                             f"owl_sparsity)] for owl_sparsity={s}")
    if not float(config.percdamp) >= 0:
        raise cli.UsageError(f"config percdamp={config.percdamp!r}: must be >= 0")
    bad = [v for v in config.sweep if not 0.0 <= float(v) <= 1.0]
    if bad:
        raise cli.UsageError(f"config sweep={list(config.sweep)!r}: {bad} not in [0, 1]")


def _data(config: Any):
    import numpy as np

    from jaxsparse import textdata

    corpus = textdata.stdlib()
    t = config.seq_len
    stride = max(1, (len(corpus.train) - t - 1) // max(1, config.train_windows - 1))
    train_w = textdata.windows(corpus.train, t, stride=stride, max_windows=config.train_windows)
    val_w = textdata.windows(corpus.val, t, max_windows=config.val_windows)
    rng = np.random.default_rng(config.seed)
    starts = rng.integers(0, len(corpus.train) - t, size=config.calib_sequences)
    calib = np.stack([corpus.train[s:s + t] for s in starts]).astype(np.int32)
    calib = calib.reshape(-1, config.calib_batch, t)
    return corpus, train_w, val_w, calib


def _run_dir(out: str, config: Any, corpus: Any) -> str:
    """``<out>/<name>-<hash>``; the hash covers the config and the corpus bytes (another
    Python's standard library is other data: another directory)."""
    digest = hashlib.sha256(corpus.train.tobytes() + b"|" + corpus.val.tobytes()).hexdigest()
    extra = {"corpus_sha256": digest[:16]}
    path = os.path.join(out, f"{config.name}-{common.config_hash(config, extra=extra)}")
    os.makedirs(path, exist_ok=True)
    common.write_json(os.path.join(path, "config.json"), common.to_dict(config))
    common.write_json(os.path.join(path, "data.json"), dict(
        name="python-stdlib", python=corpus.python, root=corpus.root, sha256=digest[:16],
        train_files=len(corpus.train_files), val_files=len(corpus.val_files),
        train_bytes=int(len(corpus.train)), val_bytes=int(len(corpus.val))))
    return path


def run(config: Any, out: str, *, show_progress: bool = True) -> dict:
    """Trains, prunes every (method, setting), writes and returns the results dict."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxsparse as js
    from jaxsparse import models, oneshot, train
    from jaxsparse.models import transformer as tf

    validate(config)
    corpus, train_w, val_w, calib = _data(config)
    path = _run_dir(out, config, corpus)
    if common.is_finished(path):
        with open(os.path.join(path, "results.json")) as f:
            results = json.load(f)
        print(results["table_md"])
        return results
    print(f"corpus: Python {corpus.python} stdlib, {len(corpus.train_files)} train files "
          f"({len(corpus.train) / 1e6:.1f} MB), {len(corpus.val_files)} val files "
          f"({len(corpus.val) / 1e6:.1f} MB)")
    model = tf.gpt(key=jax.random.key(config.seed), d_model=config.d_model,
                   num_layers=config.num_layers, num_heads=config.num_heads,
                   d_ff=config.d_ff, max_len=config.seq_len)
    fn = models.functional(model)
    sched = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                               max(config.num_steps, config.warmup_steps + 1))
    tx = optax.adamw(sched, weight_decay=config.weight_decay)
    dense_masks = jax.tree.map(lambda a: jnp.ones((), bool), fn.params)  # dense training
    state = train.init_state(fn.params, tx, key=jax.random.key(config.seed + 1),
                             masks=dense_masks)
    ckpt_dir = os.path.join(os.path.abspath(path), "checkpoints")
    resumed = os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))
    t0 = time.perf_counter()

    def log(step, rec):
        if show_progress:
            print(f"  step {step:>5}  train loss {rec['train_loss']:.4f}  "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)

    # Only a train split: train.make_eval's accuracy assumes [batch] labels (see docs).
    fit = train.fit(fn.apply_fn, tx, state, {"train": (train_w[:, :-1], train_w[:, 1:])},
                    num_steps=config.num_steps, batch_size=config.batch_size,
                    eval_every=config.eval_every, loss_fn=tf.next_token_loss, callback=log,
                    checkpoint_dir=ckpt_dir)
    train_seconds = time.perf_counter() - t0
    params = fit.state.params
    ppl = lambda p: tf.perplexity(fn.apply_fn, p, val_w)  # noqa: E731
    dense_ppl = ppl(params)
    print(f"dense: validation perplexity {dense_ppl:.3f} ({train_seconds:.0f}s training"
          f"{', resumed from a checkpoint' if resumed else ''})")
    blocks = oneshot.gpt_blocks(model)
    rows: list[dict] = [dict(method="dense", setting="-", target=0.0, sparsity=0.0,
                             perplexity=dense_ppl, seconds=0.0, nm_legal=None)]
    layer_rows: list[dict] = []

    def record(method, setting, target, result, seconds, structure=None):
        legal = None
        if structure is not None:
            legal = js.is_nm(result.params, structure.n, structure.m,
                             rules=[(lambda p, x: p in result.layers, True), (".*", False)])
            k = next(iter(result.layers))
            w, mk = oneshot.get_subtree(result.params, k), oneshot.get_subtree(result.masks, k)
            c = js.nm.compress(w, structure.n, structure.m, mask=mk)
            legal = legal and bool(jnp.array_equal(js.nm.decompress(c), jnp.where(mk, w, 0)))
        row = dict(method=method, setting=setting, target=target,
                   sparsity=float(js.sparsity(result.masks)), perplexity=ppl(result.params),
                   seconds=seconds, nm_legal=legal)
        rows.append(row)
        for r in result.layers.values():
            layer_rows.append(dict(method=method, setting=setting, path=r.path,
                                   shape="x".join(map(str, r.shape)), target=r.target,
                                   sparsity=r.sparsity, error=r.error, relative=r.relative))
        if show_progress:
            print(f"  {method:<12} {setting:<6} sparsity {row['sparsity']:.3f}  perplexity "
                  f"{row['perplexity']:.3f}  ({seconds:.1f}s)", flush=True)
        return row

    for setting in config.settings:
        kw = _setting(setting)
        for name in config.methods:
            t1 = time.perf_counter()
            res = oneshot.prune(blocks, params, calib, _method(name, config), **kw)
            st = kw.get("structure")
            target = kw["sparsity"] if st is None else 1 - st.n / st.m
            record(name, setting, target, res, time.perf_counter() - t1, kw.get("structure"))
    owl_rows = []
    for name in config.owl_methods:
        t1 = time.perf_counter()
        res = oneshot.owl(blocks, params, calib, _method(name, config),
                          sparsity=config.owl_sparsity, m=config.owl_m, lam=config.owl_lam)
        row = record(f"owl_{name}", str(config.owl_sparsity), config.owl_sparsity, res,
                     time.perf_counter() - t1)
        row["block_sparsity"] = list(res.block_sparsity)
        row["outlier_ratios"] = list(res.outlier_ratios)
        owl_rows.append(row)
    sweep: dict[str, list[float]] = {}
    for name in config.methods:
        sweep[name] = []
        for s in config.sweep:
            res = oneshot.prune(blocks, params, calib, _method(name, config), sparsity=s,
                                errors=False)
            sweep[name].append(ppl(res.params))
        if config.sweep and show_progress:
            print(f"  sweep {name:<10} " + "  ".join(
                f"{s:.1f}:{p:.2f}" for s, p in zip(config.sweep, sweep[name], strict=True)))
    results = dict(
        config=common.to_dict(config), python=corpus.python, train_seconds=train_seconds,
        train_resumed_from_checkpoint=resumed, final_train_loss=fit.history["train_loss"][-1],
        dense_perplexity=dense_ppl, rows=rows, sweep=dict(sparsity=list(config.sweep), **sweep),
        jax=jax.__version__, backend=jax.default_backend(),
        corpus=dict(train_files=len(corpus.train_files), val_files=len(corpus.val_files),
                    train_bytes=int(len(corpus.train)), val_bytes=int(len(corpus.val)),
                    val_predictions=int(val_w.shape[0] * (val_w.shape[1] - 1))),
    )
    results["table_md"] = table_md(results)
    results["layers_md"] = layers_md(layer_rows)
    common.write_rows(os.path.join(path, "results.csv"), rows)
    common.write_rows(os.path.join(path, "layers.csv"), layer_rows)
    with open(os.path.join(path, "table.md"), "w") as f:
        f.write(results["table_md"] + "\n\n" + results["layers_md"] + "\n")
    if config.sweep:
        plot(os.path.join(path, "ppl_vs_sparsity.png"), results, owl_rows)
    common.write_json(os.path.join(path, "results.json"), results)
    print(results["table_md"])
    print(results["layers_md"])
    print(f"results: {path}")
    return results


def table_md(results: dict) -> str:
    """The perplexity table: methods as rows, settings as columns (markdown)."""
    rows = results["rows"]
    settings = list(dict.fromkeys(r["setting"] for r in rows if r["method"] != "dense"))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    cell = {(r["method"], r["setting"]): r for r in rows}
    head = "| method | " + " | ".join(settings) + " |"
    lines = [f"Validation perplexity (dense: {results['dense_perplexity']:.3f})", "", head,
             "|" + "---|" * (len(settings) + 1)]
    for m in methods:
        vals = [f"{cell[(m, s)]['perplexity']:.3f}" if (m, s) in cell else "" for s in settings]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def layers_md(layer_rows: list[dict]) -> str:
    """Per-layer relative reconstruction errors, one column per (method, setting)."""
    cols = list(dict.fromkeys((r["method"], r["setting"]) for r in layer_rows))
    paths = list(dict.fromkeys(r["path"] for r in layer_rows))
    cell = {(r["method"], r["setting"], r["path"]): r["relative"] for r in layer_rows}
    head = "| layer | " + " | ".join(f"{m} {s}" for m, s in cols) + " |"
    lines = ["Relative reconstruction error ||XW - XŴ||_F / ||XW||_F per layer", "", head,
             "|" + "---|" * (len(cols) + 1)]
    for p in paths:
        vals = [f"{cell.get((m, s, p), float('nan')):.4f}" for m, s in cols]
        lines.append(f"| {p} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(path: str, results: dict, owl_rows: list[dict]) -> None:
    """Validation perplexity against sparsity per method (log y): the unstructured sweep as
    lines, 2:4 / 4:8 at 50% and OWL as markers in the method's colour, dense as a line."""

    sw = results["sweep"]
    fig, ax = common.subplots(figsize=(6.4, 4.2))
    colors = {}
    for name, values in sw.items():
        if name != "sparsity":
            (line,) = ax.plot(sw["sparsity"], values, marker="o", ms=4, label=name)
            colors[name] = line.get_color()
    markers = {"2:4": "s", "4:8": "^"}
    for r in results["rows"]:
        if r["setting"] in markers and r["method"] in colors:
            ax.scatter([r["sparsity"]], [r["perplexity"]], marker=markers[r["setting"]],
                       color=colors[r["method"]], zorder=3, s=36,
                       label=f"{r['method']} {r['setting']}")
    for r in owl_rows:
        base = r["method"].removeprefix("owl_")
        ax.scatter([r["sparsity"]], [r["perplexity"]], marker="*", s=150, zorder=3,
                   color=colors.get(base), edgecolors="black", linewidths=0.6,
                   label=f"OWL + {base} ({r['setting']})")
    ax.axhline(results["dense_perplexity"], color="gray", ls="--", lw=0.8, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity of the block kernels")
    ax.set_ylabel("validation perplexity (bytes)")
    ax.set_title("one-shot pruning, small GPT on the Python stdlib")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, data=False, population=False)
    return cli.main(p, argv, cli.runner(run), validate=validate, driver="oneshot")


if __name__ == "__main__":
    sys.exit(main())
