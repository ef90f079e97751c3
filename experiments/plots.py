"""Plots of the drivers: lottery-ticket curves against density, learning curves per method.

The lottery plots take the per-(level, branch) result dicts of ``jaxsparse.lottery.imp``
(``density``, ``early_stop_step``, ``early_stop_test_accuracy``, ``final_test_accuracy``: one
value per replicate, and the ``history``) and draw, per branch, the mean over replicates with
a ± sample-std band (:data:`experiments.common.SPREAD`, the same spread as the tables and
CSVs), on a log x axis reversed so that pruning proceeds to the right (as in Frankle &
Carbin 2019), with ticks at the levels' actual densities.

* :func:`accuracy_vs_density`: test accuracy at the early-stop iteration (top) and at the end
  of training (bottom), the full range (left) and zoomed (right) to the branches that do not
  collapse (:func:`zoom_limits`), so the ticket-vs-re-init gap is readable next to a random
  pruning control that falls to chance.
* :func:`early_stop_vs_density`: the early-stop iteration; levels where a replicate stopped at
  the last evaluation (the step cap: its validation loss was still falling) are marked.
* :func:`curves_by_run`: one learning curve (mean ± spread over replicates) per named run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from experiments import common
from experiments.common import SPREAD

STYLE = {"ticket": dict(color="C0", marker="o", lw=2.0),
         "reinit": dict(color="C3", marker="s", ls="--"),
         "random_prune": dict(color="C2", marker="^", ls=":")}
COLLAPSE = 0.10  # a branch whose worst mean is this far below the best branch's worst: zoomed out
MAX_TICKS = 12


def _style(name: str, i: int) -> dict:
    return dict(STYLE.get(name, dict(color=f"C{4 + i % 6}", marker="d", ls="-.")))


def _by_branch(results: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["branch"], []).append(r)
    return {k: sorted(v, key=lambda r: r["level"]) for k, v in out.items()}


def _series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(percent remaining, mean, sample std; nan std for one replicate) per level."""
    x = np.array([100 * np.mean(r["density"]) for r in rows])
    v = [np.asarray(r[key], np.float64) for r in rows]
    mean = np.array([a.mean() for a in v])
    std = np.array([a.std(ddof=1) if a.size > 1 else math.nan for a in v])
    return x, mean, std


def density_ticks(results: Sequence[dict]) -> list[float]:
    """Ticks at the levels' actual percent remaining (thinned to at most :data:`MAX_TICKS`,
    keeping the first and the last)."""
    levels = sorted({round(100 * float(np.mean(r["density"])), 6) for r in results},
                    reverse=True)
    if len(levels) <= MAX_TICKS:
        return levels
    k = math.ceil(len(levels) / MAX_TICKS)
    ticks = levels[::k]
    return ticks if ticks[-1] == levels[-1] else [*ticks[:-1], levels[-1]]


def zoom_limits(results: Sequence[dict], key: str,
                collapse: float = COLLAPSE) -> tuple[tuple[float, float], list[str]]:
    """Y limits (in the key's units) of the branches that do not collapse, and those that do.

    A branch *collapses* when its lowest mean over the levels is more than ``collapse``
    below the highest such lowest mean of any branch (e.g. random pruning falling to chance
    while the ticket and its re-initialisation stay within a few points).
    """
    stats = {}
    for name, rows in _by_branch(results).items():
        _, mean, std = _series(rows, key)
        std = np.nan_to_num(std)
        stats[name] = (mean.min(), (mean - std).min(), (mean + std).max())
    best = max(s[0] for s in stats.values())
    kept = {n: s for n, s in stats.items() if s[0] >= best - collapse}
    lo, hi = min(s[1] for s in kept.values()), max(s[2] for s in kept.values())
    pad = max(0.1 * (hi - lo), 0.002)
    return (lo - pad, hi + pad), sorted(set(stats) - set(kept))


def _axes_density(ax, results: Sequence[dict]) -> None:
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = density_ticks(results)
    ax.minorticks_off()
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.3g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0,
                       fontsize=7)
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.grid(alpha=0.3)


def _draw(ax, results: Sequence[dict], key: str, scale: float,
          cap: float | None = None) -> None:
    for i, (name, rows) in enumerate(_by_branch(results).items()):
        x, mean, std = _series(rows, key)
        style = _style(name, i)
        ax.plot(x, scale * mean, label=name, ms=4, **style)
        ok = ~np.isnan(std)
        if ok.any():
            hi = mean + std if cap is None else np.minimum(mean + std, cap)  # no band past a cap
            ax.fill_between(x[ok], scale * (mean - std)[ok], scale * hi[ok],
                            color=style["color"], alpha=0.15, lw=0)


def accuracy_vs_density(path: str, results: Sequence[dict], *, title: str = "") -> None:
    """Test accuracy at early stop / at the end (rows), full range / zoomed (columns)."""

    fig, axes = common.subplots(2, 2, figsize=(11, 7.5))
    for row, (key, what) in enumerate((("early_stop_test_accuracy", "at the early-stop "
                                         "iteration"),
                                        ("final_test_accuracy", "at the end of training"))):
        (lo, hi), out = zoom_limits(results, key)
        for col, ax in enumerate(axes[row]):
            _draw(ax, results, key, 100.0)
            _axes_density(ax, results)
            ax.set_ylabel(f"test accuracy (%) {what}", fontsize=8)
            if col == 1:
                ax.set_ylim(100 * lo, 100 * hi)
                note = f"; off scale: {', '.join(out)}" if out else ""
                ax.set_title(f"zoomed to the branches within {100 * COLLAPSE:g} pt{note}",
                             fontsize=8)
            else:
                ax.set_title("full range", fontsize=8)
            ax.legend(fontsize=7)
    n = max(len(r["density"]) for r in results)
    fig.suptitle(f"{title}  (mean over {n} replicates, band = ± {SPREAD})", fontsize=10)
    common.save_figure(fig, path)


def early_stop_vs_density(path: str, results: Sequence[dict], *, title: str = "") -> None:
    """Early-stop iteration (minimum validation loss) per branch; capped levels marked."""

    fig, ax = common.subplots(figsize=(6.8, 4.4))
    cap = max(int(np.max(r["history"]["step"])) for r in results)
    _draw(ax, results, "early_stop_step", 1.0, cap=cap)
    marked = False
    for i, (name, rows) in enumerate(_by_branch(results).items()):
        x, mean, _ = _series(rows, "early_stop_step")
        hit = np.array([np.any(np.asarray(r["early_stop_step"]) >= cap) for r in rows])
        if hit.any():
            ax.plot(x[hit], mean[hit], ls="none", marker="o", ms=11, mfc="none",
                    mec=_style(name, i)["color"], mew=1.2,
                    label=None if marked else "≥1 replicate stopped at the step cap")
            marked = True
    ax.axhline(cap, color="gray", ls=(0, (4, 2)), lw=0.8,
               label=f"step cap = last evaluation ({cap})")
    _axes_density(ax, results)
    ax.set_ylabel("early-stop iteration (min. validation loss)")
    ax.legend(fontsize=7)
    n = max(len(r["density"]) for r in results)
    ax.set_title(f"{title}  (mean over {n} replicates, band = ± {SPREAD})", fontsize=9)
    common.save_figure(fig, path)


def curves_by_run(path: str, histories: Mapping[str, dict], *, metric: str = "test_accuracy",
                  title: str = "", panels: Mapping[str, Sequence[str]] | None = None) -> None:
    """One learning curve per run: ``metric`` against iteration, mean ± spread if per-replicate.

    Args:
      path: the PNG to write.
      histories: run name -> history (``step`` and ``metric``; values per evaluation, or per
        evaluation a list of per-replicate values).
      metric: the history key to plot.
      title: figure title.
      panels: panel title -> run names (default: one panel with every run).
    """

    panels = {"": list(histories)} if panels is None else dict(panels)
    fig, axes = common.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False)
    for ax, (ptitle, names) in zip(axes[0], panels.items(), strict=True):
        late = []  # values from 20% of training on: the y range (the start is off scale)
        for i, name in enumerate(names):
            h = histories[name]
            v = np.asarray(h[metric], np.float64)
            steps = np.asarray(h["step"])
            mean = v if v.ndim == 1 else v.mean(axis=1)
            std = np.zeros_like(mean) if v.ndim == 1 or v.shape[1] < 2 else v.std(axis=1, ddof=1)
            n = "" if v.ndim == 1 else f" (n={v.shape[1]})"
            (line,) = ax.plot(steps, mean, label=f"{name}{n}", color=f"C{i % 10}")
            if std.any():
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(),
                                alpha=0.15, lw=0)
            at = steps >= 0.2 * steps.max()
            late += [(mean - std)[at].min(), (mean + std)[at].max()]
        if late:
            lo, hi = min(late), max(late)
            pad = max(0.15 * (hi - lo), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (y range: 20% of training on)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if ptitle:
            ax.set_title(ptitle, fontsize=9)
    fig.suptitle(f"{title}  (mean, band = ± {SPREAD})" if title else f"band = ± {SPREAD}",
                 fontsize=10)
    common.save_figure(fig, path)
