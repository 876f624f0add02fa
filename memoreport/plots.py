"""The report's drawings: matplotlib (Agg backend, no display) figures returned as PNG bytes.
Each function draws data computed by :mod:`memoreport.data`; none computes anything."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SIZE = (7.0, 3.6)  # inches; 100 dpi


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def bars(x: list, y: list, title: str, xlabel: str, ylabel: str) -> bytes:
    """One bar per x (numbers or names)."""
    fig, ax = plt.subplots(figsize=SIZE)
    pos = np.arange(len(x)) if x and isinstance(x[0], str) else np.asarray(x)
    ax.bar(pos, y, color="tab:blue")
    if x and isinstance(x[0], str):
        ax.set_xticks(pos, x, rotation=30 if len(x) > 8 else 0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _png(fig)


def grouped_bars(categories: list[str], series: dict[str, list], title: str, ylabel: str,
                 ylim=None) -> bytes:
    """One group of bars per category, one bar (colour) per series; without ``ylim`` the
    values are counts (integer ticks)."""
    fig, ax = plt.subplots(figsize=SIZE)
    width = 0.8 / max(1, len(series))
    pos = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(pos + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(pos, categories, rotation=30 if len(categories) > 8 else 0)
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", ncol=max(1, len(series) // 6))
    return _png(fig)


def lines(series: dict[str, list], title: str, ylabel: str, xlabel: str = "update",
          logy: bool = False, marks: dict | None = None, step: bool = False,
          colors: dict | None = None, legend: bool | None = None) -> bytes:
    """One line per series of ``(x, y)`` points; ``marks``: series name -> an x to mark on its
    line (e.g. the selected step); ``step``: a staircase (counters); ``colors``: series name ->
    colour (the same task in the same colour on every plot); ``legend``: default, with more
    than one series."""
    fig, ax = plt.subplots(figsize=SIZE)
    for name, pts in series.items():
        if not pts:
            continue
        xs, ys = zip(*pts)
        style = {"label": name, "color": (colors or {}).get(name)}
        if step:
            (line,) = ax.step(xs, ys, where="post", **style)
        else:
            (line,) = ax.plot(xs, ys, marker="." if len(xs) < 30 else None, **style)
        mark = (marks or {}).get(name)
        if mark is not None and mark in xs:
            ax.plot([mark], [ys[xs.index(mark)]], "o", ms=9, mfc="none",
                    color=line.get_color())
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if legend or (legend is None and len(series) > 1):
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def matrix(cm, labels: list[str], title: str) -> bytes:
    """A confusion matrix: rows the reference labels, columns the predictions, the counts
    written in the cells, coloured by each row's share."""
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(title=title, xlabel="predicted", ylabel="reference")
    return _png(fig)
