"""Figures from run records, each written as PNG and SVG.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend):
accuracy bars, the difference to the baseline with its CI, accuracy against params,
MACs and training time (Pareto front marked), training curves, confusion matrices
(fine and, for CIFAR-100, the 20 superclasses), per-class and per-superclass accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox

from ..data.meta import CIFAR100_FINE_TO_COARSE, DATASETS
from ..io import atomic_open
from .records import Variant
from .summary import Row, Table

TIER_COLORS = {"small": "#1f77b4", "standard": "#ff7f0e"}
OTHER_COLOR = "#7f7f7f"
VERDICT_COLORS = {"gain": "#2ca02c", "loss": "#d62728", "no demonstrated difference": "#7f7f7f"}
SPLIT_STYLES = {"train": "--", "val": ":", "test": "-"}
SPLIT_LABELS = {"train": "train (running, augmented)", "val": "validation", "test": "test"}
LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}
MAX_CURVE_VARIANTS = 10
# Names and labels come from records (variant folders, model names) and are drawn as plain text: matplotlib would
# otherwise parse $...$ in them as mathematics, which a crafted name can make fail or run for minutes.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "cifarlab", "svg.fonttype": "none",
         "text.parse_math": False, "text.usetex": False}


def _tier_color(tier: str) -> str:
    return TIER_COLORS.get(tier, OTHER_COLOR)


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png (150 dpi) and ``stem``.svg atomically; returns both paths."""
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = stem.with_name(f"{stem.name}.{ext}")
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=ext, dpi=150, metadata=meta)
        paths.append(path)
    return paths


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * x


def time_unit(max_seconds: float) -> tuple[float, str]:
    """(divisor, unit) that keeps a time axis readable."""
    if max_seconds < 180:
        return 1.0, "s"
    if max_seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def pareto_front(costs: list[float], accs: list[float]) -> list[int]:
    """Indices of points no other point beats on both (lower cost, higher accuracy), by increasing cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accs[i]))
    front, best = [], -np.inf
    for i in order:
        if accs[i] > best:
            front.append(i)
            best = accs[i]
    return front


def _overlaps(bb, others) -> bool:
    return any(bb.overlaps(o) for o in others)


def place_labels(fig: Figure, ax, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Annotate points with their names, trying offsets around each point until the text overlaps no other
    label, no other point and stays inside the axes; a far offset gets a leader line."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    axes_bb = ax.get_window_extent(renderer)
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    r = 4.0
    taken = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in pts]
    offsets = [(7, 0), (-7, 0), (7, 10), (7, -10), (-7, 10), (-7, -10), (0, 12), (0, -12),
               (7, 20), (7, -20), (-7, 20), (-7, -20), (14, 30), (14, -30), (-14, 30), (-14, -30),
               (20, 42), (20, -42), (-20, 42), (-20, -42)]
    for i in sorted(range(len(labels)), key=lambda i: -ys[i]):
        placed = None
        for dx, dy in offsets:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            far = abs(dy) > 12
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", ha=ha,
                            va="center", fontsize=7, bbox=LABEL_BOX, zorder=6,
                            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if far else None)
            bb = t.get_window_extent(renderer)
            if axes_bb.contains(bb.x0, bb.y0) and axes_bb.contains(bb.x1, bb.y1) and not _overlaps(bb, taken):
                placed = bb
                break
            t.remove()
        if placed is None:  # crowded: the first offset, accepted as is
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=offsets[0], textcoords="offset points",
                            ha="left", va="center", fontsize=7, bbox=LABEL_BOX, zorder=6)
            placed = t.get_window_extent(renderer)
        taken.append(placed)


def accuracy_bars(table: Table, stem: Path) -> list[Path]:
    rows = table.rows
    with mpl.rc_context(STYLE):
        fig = _figure(7.5, 1.2 + 0.32 * len(rows))
        ax = fig.add_subplot()
        y = np.arange(len(rows))[::-1]
        means = [_pct(r.top1.mean) for r in rows]
        stds = [_pct(r.top1.std) if r.top1.std is not None else 0.0 for r in rows]
        ax.barh(y, means, xerr=stds, color=[_tier_color(r.variant.tier) for r in rows],
                edgecolor=["black" if r.is_baseline else "none" for r in rows], linewidth=1.2,
                error_kw={"elinewidth": 1, "capsize": 3}, height=0.65)
        right = max(1.0, max(m + s for m, s in zip(means, stds, strict=True)))
        for yi, m, s in zip(y, means, stds, strict=True):
            ax.text(m + s + 0.01 * right, yi, f"{m:.2f}", va="center", fontsize=7)
        ax.set_yticks(y, [f"{r.name}  (n={r.top1.n})" for r in rows])
        ax.set_xlabel("Top-1 test accuracy (%), mean ± std over seeds")
        ax.set_xlim(0, right * 1.12)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_title(f"Top-1 accuracy — {table.title}")
        handles = [Patch(color=_tier_color(t), label=f"{t} tier") for t in table.tiers]
        handles.append(Patch(facecolor="white", edgecolor="black", label="baseline"))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
        return save(fig, stem)


def delta_forest(table: Table, stem: Path) -> list[Path] | None:
    """Each variant's top-1 difference to its baseline with the 95 % CI; None when nothing was compared."""
    rows = [r for r in table.rows if r.comparison is not None]
    if not rows:
        return None
    with mpl.rc_context(STYLE):
        fig = _figure(7.5, 1.4 + 0.32 * len(rows))
        ax = fig.add_subplot()
        y = np.arange(len(rows))[::-1]
        for yi, r in zip(y, rows, strict=True):
            c = r.comparison
            color = VERDICT_COLORS[c.verdict]
            ax.errorbar(100 * c.delta, yi, xerr=[[100 * max(c.delta - c.low, 0)], [100 * max(c.high - c.delta, 0)]],
                        fmt="o", color=color, capsize=3, ms=5)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, [f"{r.name} vs {r.comparison.baseline}" for r in rows])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlabel("Top-1 difference to the baseline (percentage points), 95 % CI")
        ax.grid(axis="y", visible=False)
        ax.set_title(f"Difference to baseline — {table.title}")
        fig.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLORS.items()],
                   loc="outside lower center", ncol=3)
        return save(fig, stem)


def _scatter(table: Table, stem: Path, cost: Callable[[Row], float], xlabel: str, title: str,
             xerr: Callable[[Row], float] | None = None) -> list[Path]:
    rows = [r for r in table.rows if np.isfinite(cost(r))]
    xs = [cost(r) for r in rows]
    ys = [_pct(r.top1.mean) for r in rows]
    with mpl.rc_context(STYLE):
        fig = _figure(7.5, 5.0)
        ax = fig.add_subplot()
        for r, x, yv in zip(rows, xs, ys, strict=True):
            ax.errorbar(x, yv, yerr=_pct(r.top1.std) if r.top1.std is not None else None,
                        xerr=xerr(r) if xerr else None, fmt="D" if r.is_baseline else "o",
                        color=_tier_color(r.variant.tier), ms=6, capsize=2, elinewidth=0.8, zorder=3)
        front = pareto_front(xs, ys)
        if len(front) > 1:
            ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="#2ca02c", lw=1.2,
                    zorder=2)
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=150, facecolors="none",
                   edgecolors="#2ca02c", lw=1.2, zorder=4)
        ax.margins(x=0.2, y=0.15)
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        elif max(xs) - min(xs) < 0.1 * max(map(abs, xs)):  # nearly equal costs: show them as nearly equal
            centre = (max(xs) + min(xs)) / 2
            ax.set_xlim(centre - 0.1 * abs(centre) - 1e-12, centre + 0.1 * abs(centre) + 1e-12)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Top-1 test accuracy (%), mean ± std over seeds")
        ax.set_title(title)
        handles = [Line2D([], [], marker="o", ls="", color=_tier_color(t), label=f"{t} tier") for t in table.tiers]
        handles += [Line2D([], [], marker="D", ls="", color="black", label="baseline"),
                    Line2D([], [], marker="o", ms=10, mfc="none", color="#2ca02c", label="Pareto front")]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
        place_labels(fig, ax, xs, ys, [r.name for r in rows])
        return save(fig, stem)


def count_unit(max_value: float) -> tuple[float, str]:
    """(divisor, word) for a count axis: thousands, millions or billions."""
    for div, word in ((1e9, "billions"), (1e6, "millions")):
        if max_value >= div:
            return div, word
    return 1e3, "thousands"


def accuracy_vs_params(table: Table, stem: Path) -> list[Path]:
    div, word = count_unit(max(r.params for r in table.rows))
    return _scatter(table, stem, lambda r: r.params / div, f"Parameters ({word})",
                    f"Accuracy vs parameters — {table.title}")


def accuracy_vs_macs(table: Table, stem: Path) -> list[Path]:
    div, word = count_unit(max(r.macs for r in table.rows))
    return _scatter(table, stem, lambda r: r.macs / div, f"Multiply-adds per 32×32 image ({word}; convs and "
                    "matmuls only)", f"Accuracy vs MACs — {table.title}")


def accuracy_vs_time(table: Table, stem: Path) -> list[Path] | None:
    rows = [r for r in table.rows if r.train_seconds is not None]
    if not rows:
        return None
    div, unit = time_unit(max(r.train_seconds.mean for r in rows))
    return _scatter(table, stem, lambda r: r.train_seconds.mean / div if r.train_seconds else float("nan"),
                    f"Training wall time per run ({unit}; decode, evaluation and checkpoints included)",
                    f"Accuracy vs training time — {table.title}",
                    xerr=lambda r: (r.train_seconds.std or 0.0) / div)


def _curve_rows(table: Table) -> list[Row]:
    """The variants with recorded curves; with many, the baselines and the most accurate others."""
    rows = [r for r in table.rows if any(run.metrics for run in r.variant.runs)]
    if len(rows) <= MAX_CURVE_VARIANTS:
        return rows
    keep = [r for r in rows if r.is_baseline][:MAX_CURVE_VARIANTS]
    rest = sorted((r for r in rows if not r.is_baseline), key=lambda r: -r.top1.mean)
    keep += rest[:MAX_CURVE_VARIANTS - len(keep)]
    return [r for r in rows if r in keep]


def _mean_curve(variant: Variant, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs and the mean, min and max over seeds of a metrics.jsonl column."""
    per_epoch: dict[int, list[float]] = {}
    for run in variant.runs:
        for row in run.metrics:
            if row.get(key) is not None:
                per_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = np.array(sorted(per_epoch))
    vals = [np.array(per_epoch[e]) for e in epochs]
    return (epochs, np.array([v.mean() for v in vals]), np.array([v.min() for v in vals]),
            np.array([v.max() for v in vals]))


def training_curves(table: Table, stem: Path) -> list[Path] | None:
    rows = _curve_rows(table)
    if not rows:
        return None
    n_total = sum(1 for r in table.rows if any(run.metrics for run in r.variant.runs))
    colors = mpl.colormaps["tab10"].colors  # MAX_CURVE_VARIANTS <= 10
    with mpl.rc_context(STYLE):
        fig = _figure(12, 4.8 + 0.25 * ((len(rows) + 3) // 4))
        ax_loss, ax_acc = fig.subplots(1, 2)
        splits_seen = set()
        for color, r in zip(colors, rows, strict=False):
            for split in ("train", "val", "test"):
                for ax, key, scale in ((ax_loss, f"{split}_loss", 1.0), (ax_acc, f"{split}_top1", 100.0)):
                    ep, mean, lo, hi = _mean_curve(r.variant, key)
                    if len(ep) == 0:
                        continue
                    splits_seen.add(split)
                    ax.plot(ep, scale * mean, SPLIT_STYLES[split], color=color, lw=1.3,
                            marker="." if len(ep) < 30 else None)
                    if split == "test" and len(r.variant.runs) > 1:
                        ax.fill_between(ep, scale * lo, scale * hi, color=color, alpha=0.15, lw=0)
        ax_loss.set_xlabel("Epoch")
        ax_loss.set_ylabel("Cross-entropy loss (nats)")
        ax_loss.set_title("Loss (mean over seeds)")
        ax_acc.set_xlabel("Epoch")
        ax_acc.set_ylabel("Top-1 accuracy (%)")
        ax_acc.set_title("Top-1 accuracy (mean over seeds; band: min–max of test)")
        for ax in (ax_loss, ax_acc):
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax_acc.legend(handles=[Line2D([], [], ls=SPLIT_STYLES[s], color="black", label=SPLIT_LABELS[s])
                               for s in ("train", "val", "test") if s in splits_seen], loc="best", title="split")
        fig.legend(handles=[Line2D([], [], color=c, lw=2, label=r.name) for c, r in zip(colors, rows, strict=False)],
                   loc="outside lower center", ncol=min(4, len(rows)), title="variant")
        shown = "" if len(rows) == n_total else f" ({len(rows)} of {n_total} variants: baselines and the best)"
        fig.suptitle(f"Training curves — {table.title}{shown}")
        return save(fig, stem)


def superclass_mapping(record: dict) -> np.ndarray | None:
    """Fine -> coarse label map for a CIFAR-100 record: the official one, or the contiguous blocks of the synthetic
    generator, whichever reproduces the record's per-superclass accuracy; None if neither does (or no data)."""
    sup = record.get("per_superclass_accuracy")
    labels, preds = record.get("test_labels"), record.get("test_predictions")
    if record.get("dataset") != "cifar100" or not sup or labels is None or preds is None:
        return None
    labels, preds = np.asarray(labels), np.asarray(preds)
    for mapping in (np.asarray(CIFAR100_FINE_TO_COARSE), np.arange(100) * 20 // 100):
        coarse = mapping[labels]
        acc = [(labels[coarse == c] == preds[coarse == c]).mean() if (coarse == c).any() else None
               for c in range(20)]
        if all((a is None and s is None) or (a is not None and s is not None and abs(a - s) < 1e-3)
               for a, s in zip(acc, sup, strict=True)):
            return mapping
    return None


def _confusion(variant: Variant, num_classes: int) -> np.ndarray | None:
    """Counts summed over the variant's seeds (rows: true class); None if a record lacks predictions."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    for run in variant.runs:
        labels, preds = run.record.get("test_labels"), run.record.get("test_predictions")
        if labels is None or preds is None:
            return None
        np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def _row_normalised(m: np.ndarray) -> np.ndarray:
    return 100.0 * m / np.maximum(m.sum(1, keepdims=True), 1)


def confusion_matrix(row: Row, stem: Path) -> list[Path] | None:
    info = DATASETS[row.variant.runs[0].record["dataset"]]
    m = _confusion(row.variant, info.num_classes)
    if m is None:
        return None
    mapping = superclass_mapping(row.variant.runs[0].record)
    order = np.argsort(mapping, kind="stable") if mapping is not None else np.arange(info.num_classes)
    norm = _row_normalised(m)[np.ix_(order, order)]
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(8.5, 7.5)
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.85, label="Share of the true class's test images (%)")
        if mapping is not None:
            bounds = np.flatnonzero(np.diff(mapping[order])) + 0.5
            for b in bounds:
                ax.axhline(b, color="white", lw=0.4)
                ax.axvline(b, color="white", lw=0.4)
            edges = np.concatenate([[-0.5], bounds, [len(order) - 0.5]])
            centres = (edges[:-1] + edges[1:]) / 2
            names = [n.replace("_", " ") for n in info.coarse_classes]
            ax.set_yticks(centres, names, fontsize=6)
            ax.set_xticks(centres, names, fontsize=6, rotation=90)
            ax.set_xlabel("Predicted class (grouped by superclass)")
            ax.set_ylabel("True class (grouped by superclass)")
        else:
            names = list(info.classes)
            step = 1 if len(names) <= 20 else 10
            ticks = np.arange(0, len(names), step)
            ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=7)
            ax.set_xticks(ticks, [names[i] for i in ticks], fontsize=7, rotation=90)
            ax.set_xlabel("Predicted class")
            ax.set_ylabel("True class")
        ax.set_title(f"Confusion matrix, row-normalised — {row.name} ({len(row.variant.runs)} seeds, "
                     f"{int(m.sum()):,} test predictions)")
        return save(fig, stem)


def superclass_confusion(row: Row, stem: Path) -> list[Path] | None:
    record = row.variant.runs[0].record
    mapping = superclass_mapping(record)
    m = _confusion(row.variant, 100) if mapping is not None else None
    if m is None:
        return None
    coarse = np.zeros((20, 20), dtype=np.int64)
    np.add.at(coarse, (mapping[:, None].repeat(100, 1), mapping[None, :].repeat(100, 0)), m)
    norm = _row_normalised(coarse)
    names = [n.replace("_", " ") for n in DATASETS["cifar100"].coarse_classes]
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(10, 9)
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
        fig.colorbar(im, ax=ax, shrink=0.8, label="Share of the true superclass's test images (%)")
        for i in range(20):
            for j in range(20):
                if norm[i, j] >= 0.5:
                    ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 55 else "black")
        ax.set_xticks(range(20), names, rotation=90)
        ax.set_yticks(range(20), names)
        ax.set_xlabel("Predicted superclass (of the predicted fine class)")
        ax.set_ylabel("True superclass")
        ax.set_title(f"Superclass confusion, row-normalised (%) — {row.name}")
        return save(fig, stem)


def _mean_lists(variant: Variant, key: str) -> np.ndarray | None:
    """Element-wise mean over seeds of a per-class list (NaN where no seed has a value); None if a record lacks it."""
    lists = [run.record.get(key) for run in variant.runs]
    if any(v is None for v in lists):
        return None
    arr = np.array([[np.nan if x is None else x for x in v] for v in lists], dtype=float)
    counts = (~np.isnan(arr)).sum(0)
    return np.where(counts > 0, np.nansum(arr, 0) / np.maximum(counts, 1), np.nan)


def per_class_accuracy(row: Row, baseline: Row | None, stem: Path) -> list[Path] | None:
    acc = _mean_lists(row.variant, "per_class_accuracy")
    if acc is None:
        return None
    names = list(DATASETS[row.variant.runs[0].record["dataset"]].classes)
    order = np.argsort(-acc, kind="stable")
    base = _mean_lists(baseline.variant, "per_class_accuracy") if baseline is not None else None
    with mpl.rc_context(STYLE):
        fig = _figure(max(7.5, 0.16 * len(names)), 4.8)
        ax = fig.add_subplot()
        x = np.arange(len(names))
        ax.bar(x, 100 * acc[order], color=_tier_color(row.variant.tier), label=f"{row.name} (mean over seeds)")
        if base is not None:
            ax.plot(x, 100 * base[order], "_", color="black", ms=7, mew=1.5, label=f"baseline {baseline.name}")
        ax.set_xticks(x, [names[i].replace("_", " ") for i in order], rotation=90, fontsize=6)
        ax.set_xlim(-0.7, len(names) - 0.3)
        ax.set_ylim(0, 105)
        ax.set_ylabel("Per-class top-1 accuracy (%)")
        ax.set_xlabel("Class (sorted by accuracy)")
        ax.grid(axis="x", visible=False)
        ax.set_title(f"Per-class accuracy — {row.name}")
        fig.legend(loc="outside lower center", ncol=2)
        return save(fig, stem)


def per_superclass_accuracy(row: Row, baseline: Row | None, stem: Path) -> list[Path] | None:
    acc = _mean_lists(row.variant, "per_superclass_accuracy")
    if acc is None:
        return None
    base = _mean_lists(baseline.variant, "per_superclass_accuracy") if baseline is not None else None
    names = [n.replace("_", " ") for n in DATASETS["cifar100"].coarse_classes]
    with mpl.rc_context(STYLE):
        fig = _figure(9, 5.5)
        ax = fig.add_subplot()
        y = np.arange(20)[::-1]
        h = 0.4 if base is not None else 0.7
        ax.barh(y + (h / 2 if base is not None else 0), 100 * acc, height=h, color=_tier_color(row.variant.tier),
                label=row.name)
        if base is not None:
            ax.barh(y - h / 2, 100 * base, height=h, color="#bbbbbb", label=f"baseline {baseline.name}")
        ax.set_yticks(y, names)
        ax.set_xlim(0, 100)
        ax.set_xlabel("Top-1 accuracy on the superclass's test images (%), fine labels, mean over seeds")
        ax.grid(axis="y", visible=False)
        ax.set_title(f"Per-superclass accuracy — {row.name}")
        fig.legend(loc="outside lower center", ncol=2)
        return save(fig, stem)
