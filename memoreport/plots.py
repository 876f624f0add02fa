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


SPEAKER = "limegreen"
OTHERS = ("darkorange", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:cyan")


def contact_sheet(sheet: dict, title: str) -> bytes:
    """A segment's contact sheet (:func:`memoreport.data.segment_sheet`): its frames with every
    kept face boxed (the speaker thick, in green; each other track in its own colour), the
    mouth opening of each track and the voice activity under them, the shown frames marked on
    the traces."""
    from matplotlib.patches import Rectangle

    panels = sheet["panels"]
    k = max(1, len(panels))
    fig = plt.figure(figsize=(max(7.0, 1.9 * k), 5.0))
    grid = fig.add_gridspec(3, k, height_ratios=[1.8, 1.2, 0.5])

    ids = sorted(set(sheet["mouth"]) | {t for p in panels for t, _ in p["faces"]})
    colors = {t: OTHERS[i % len(OTHERS)] for i, t in enumerate(
        t for t in ids if t != sheet["speaker"])}
    colors[sheet["speaker"]] = SPEAKER

    def label(t):
        return (f"track {t}" + (" (speaker)" if t == sheet["speaker"] else "")
                + ("" if t in sheet["decided"] else " (too rare, not judged)"))

    for i, p in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.set_axis_off()
        ax.set_title(f"frame {p['frame']}, {p['time']:.1f} s", fontsize="small")
        if p["image"] is None:
            ax.text(0.5, 0.5, p["empty"], ha="center", va="center", color="gray",
                    fontsize="small", transform=ax.transAxes)
            continue
        ax.imshow(p["image"])
        for t, (x0, y0, x1, y1) in p["faces"]:
            color = colors[t]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color,
                                   lw=3 if t == sheet["speaker"] else 1.2))
            ax.text(x0, y0, str(t), color="black", fontsize="x-small", va="bottom",
                    bbox={"fc": color, "ec": "none", "pad": 1})
    mouth = fig.add_subplot(grid[1, :])
    for t, pts in sheet["mouth"].items():
        if pts:
            xs, ys = zip(*pts)
            mouth.plot(xs, ys, color=colors[t],
                       lw=2.2 if t == sheet["speaker"] else 1, label=label(t))
    if any(sheet["mouth"].values()):
        mouth.legend(fontsize="x-small", loc="upper right")
    else:
        mouth.text(0.5, 0.5, sheet["no_track"], ha="center", va="center", color="gray",
                   transform=mouth.transAxes)
    mouth.set(ylabel="mouth opening", xlim=(0, sheet["duration"]))
    mouth.tick_params(labelbottom=False)
    vad = fig.add_subplot(grid[2, :], sharex=mouth)
    if sheet["vad"]:
        xs, ys = zip(*sheet["vad"])
        vad.fill_between(xs, ys, step="post", color="tab:blue", alpha=0.6, lw=0)
    else:
        vad.text(0.5, 0.5, "voice activity not drawn", ha="center", va="center",
                 color="gray", transform=vad.transAxes)
    vad.set(ylabel="voice", xlabel="seconds from the line's start", ylim=(0, 1.05),
            yticks=[])
    for ax in (mouth, vad):
        for p in panels:
            ax.axvline(p["time"], color="black", ls=":", lw=0.8)
    speaker = "nobody" if sheet["speaker"] is None else f"track {sheet['speaker']}"
    text = sheet["text"] if len(sheet["text"]) <= 70 else sheet["text"][:67] + "..."
    fig.suptitle(f"{title}: speaker {speaker}\n\"{text}\"", fontsize="medium")
    return _png(fig)
