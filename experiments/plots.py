"""Lottery-ticket plots: test accuracy and early-stop iteration against percent remaining.

Both take the per-(level, branch) result dicts of ``experiments/lottery.py`` (``density``,
``early_stop_step``, ``early_stop_test_accuracy``, ``final_test_accuracy``: one value per
replicate) and draw, per branch, the mean over replicates with a min-max band, on a log x axis
reversed so that pruning proceeds to the right (as in Frankle & Carbin 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STYLE = {"ticket": dict(color="C0", marker="o", lw=2.0),
         "reinit": dict(color="C3", marker="s", ls="--"),
         "random_prune": dict(color="C2", marker="^", ls=":")}


def _series(results: Sequence[dict], key: str) -> dict[str, tuple[np.ndarray, ...]]:
    by_branch: dict[str, list[dict]] = {}
    for r in results:
        by_branch.setdefault(r["branch"], []).append(r)
    out = {}
    for name, rows in by_branch.items():
        rows = sorted(rows, key=lambda r: r["level"])
        x = np.array([100 * np.mean(r["density"]) for r in rows])
        v = [np.asarray(r[key], np.float64) for r in rows]
        out[name] = (x, np.array([a.mean() for a in v]), np.array([a.min() for a in v]),
                     np.array([a.max() for a in v]))
    return out


def _plot(path: str, results: Sequence[dict], keys: Sequence[tuple[str, str]], ylabel: str,
          title: str, scale: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, suffix in keys:
        for i, (name, (x, mean, lo, hi)) in enumerate(_series(results, key).items()):
            style = dict(STYLE.get(name, dict(color=f"C{4 + i % 6}", marker="d", ls="-.")))
            if suffix:
                style.update(ls=(0, (1, 1)), alpha=0.6, marker=None)
            ax.plot(x, scale * mean, label=name + suffix, ms=4, **style)
            ax.fill_between(x, scale * lo, scale * hi, color=style["color"], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.invert_xaxis()
    lowest = min(100 * min(np.mean(r["density"]) for r in results), 100.0)
    ticks = [t for t in (100, 51.3, 21.1, 7.0, 3.6, 1.9, 0.9, 0.5, 0.2) if t >= 0.8 * lowest]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title + "  (mean over replicates, band = min..max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_density(path: str, results: Sequence[dict], *, title: str = "") -> None:
    """Test accuracy at the early-stop iteration (solid) and at the end (dotted) per branch."""
    _plot(path, results, [("early_stop_test_accuracy", ""), ("final_test_accuracy", " (final)")],
          "test accuracy (%)", title, 100.0)


def early_stop_vs_density(path: str, results: Sequence[dict], *, title: str = "") -> None:
    """Early-stop iteration (minimum validation loss) per branch."""
    _plot(path, results, [("early_stop_step", "")], "early-stop iteration", title, 1.0)
