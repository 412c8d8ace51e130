"""The ``--plot`` figure of ``bench/drift_quality.py``: detection delay vs shift size.

matplotlib is not a dependency of Sentinelle: the caller checks it imports.
"""

from __future__ import annotations

import math


def plot_delays(series: dict[str, list[tuple[float, float]]], cap: int, title: str,
                path: str) -> None:
    """One line per detector: median delay (events) per mean shift (standard deviations).

    A median beyond ``cap`` (infinite) is drawn at the cap with an open marker.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ("o-", "s-", "^-", "o--", "s--", "^--")
    for (label, points), style in zip(series.items(), styles * 2, strict=False):
        xs = [x for x, _ in points]
        ys = [min(y, cap) for _, y in points]
        line, = ax.plot(xs, ys, style, label=label)
        missed = [(x, cap) for x, y in points if math.isinf(y)]
        if missed:
            ax.plot(*zip(*missed, strict=True), "o", mfc="white", color=line.get_color())
    ax.axhline(cap, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([0.25, 0.5, 1.0], ["0.25", "0.5", "1"])
    ax.set_xlabel("mean shift (standard deviations of the feature)")
    ax.set_ylabel("median detection delay (events)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
