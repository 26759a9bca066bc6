"""A study's table as Markdown, LaTeX and CSV.

Markdown and LaTeX show percentages and rounded costs, one block per size tier; the CSV
keeps the records' units (accuracies as fractions, seconds, counts) at full precision.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .figures import time_unit
from .records import run_ids
from .summary import MeanStd, Row, Table

CSV_COLUMNS = ["dataset", "dataset_fingerprint", "study", "tier", "variant", "model", "is_baseline", "n_seeds",
               "seeds", "top1_mean", "top1_std", "top5_mean", "top5_std", "params", "macs", "train_seconds_mean",
               "train_seconds_std", "images_per_second_mean", "baseline", "delta_top1", "ci_low", "ci_high",
               "verdict", "runs"]


def pct(m: MeanStd | None, digits: int = 2) -> str:
    if m is None:
        return "—"
    return f"{100 * m.mean:.{digits}f}" + (f" ± {100 * m.std:.{digits}f}" if m.std is not None else "")


def signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def delta_text(row: Row) -> str:
    c = row.comparison
    if c is None:
        return "baseline" if row.is_baseline else "—"
    return f"{signed(c.delta)} [{signed(c.low)}, {signed(c.high)}]"


def _time_header(table: Table) -> tuple[float, str]:
    secs = [r.train_seconds.mean for r in table.rows if r.train_seconds is not None]
    return time_unit(max(secs)) if secs else (1.0, "s")


def _cells(row: Row, div: float) -> list[str]:
    t = row.train_seconds
    ips = row.images_per_second
    return [row.name, row.variant.model, str(row.top1.n), pct(row.top1), pct(row.top5), f"{row.params / 1e6:.3f}",
            f"{row.macs / 1e6:.2f}", "—" if t is None else f"{t.mean / div:.1f}",
            "—" if ips is None else f"{ips.mean:,.0f}", delta_text(row),
            row.comparison.verdict if row.comparison else ""]


def _headers(unit: str) -> list[str]:
    return ["Variant", "Model", "Seeds", "Top-1 (%)", "Top-5 (%)", "Params (M)", "MACs (M)", f"Train time ({unit})",
            "Train images/s", "Δ top-1 vs baseline (pp, 95 % CI)", "Evidence"]


def _tier_blocks(table: Table) -> list[tuple[str, list[Row]]]:
    return [(t, [r for r in table.rows if r.variant.tier == t]) for t in table.tiers]


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(table: Table, link_from: Path) -> str:
    """The table as Markdown; each row links its runs' result.json relative to the folder ``link_from``."""
    div, unit = _time_header(table)
    ids = run_ids(table.runs)
    head = _headers(unit) + ["Runs"]
    out = []
    blocks = _tier_blocks(table)
    for tier, rows in blocks:
        if len(blocks) > 1:
            out.append(f"\n**{tier} tier**\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---:" if 2 <= i < len(head) - 2 else "---" for i in range(len(head))) + "|")
        for r in rows:
            links = ", ".join(f"[{ids[run.root]}]({run_link(run.result_path, link_from)})" for run in r.variant.runs)
            out.append("| " + " | ".join(_md_escape(c) for c in _cells(r, div)) + f" | {links} |")
    return "\n".join(out).lstrip("\n") + "\n"


def run_link(target: Path, link_from: Path) -> str:
    return Path(os.path.relpath(target, link_from)).as_posix()


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--"}


def _tex(s: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in s)


def latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); the last column names the runs."""
    div, unit = _time_header(table)
    ids = run_ids(table.runs)
    head = _headers(unit) + ["Runs"]
    cols = "ll" + "r" * (len(head) - 4) + "ll"
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule", " & ".join(_tex(h) for h in head) + r" \\", r"\midrule"]
    blocks = _tier_blocks(table)
    for i, (tier, rows) in enumerate(blocks):
        if len(blocks) > 1:
            if i:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{len(head)}}}{{l}}{{\emph{{{_tex(tier)} tier}}}} \\")
        for r in rows:
            runs = ", ".join(ids[run.root] for run in r.variant.runs)
            lines.append(" & ".join(_tex(c) for c in _cells(r, div)) + rf" & \texttt{{\footnotesize {_tex(runs)}}} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = (f"% {table.title} on {table.dataset} (data fingerprint {table.fingerprint}); top-1/top-5: mean "
               f"$\\pm$ std over seeds; MACs: convs and matmuls of one 32x32 image")
    return caption + "\n" + "\n".join(lines) + "\n"


def csv_text(table: Table) -> str:
    ids = run_ids(table.runs)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in table.rows:
        c = r.comparison
        w.writerow({
            "dataset": table.dataset, "dataset_fingerprint": table.fingerprint, "study": table.study or "",
            "tier": r.variant.tier, "variant": r.name, "model": r.variant.model, "is_baseline": int(r.is_baseline),
            "n_seeds": r.top1.n, "seeds": " ".join(map(str, r.variant.seeds)),
            "top1_mean": repr(r.top1.mean), "top1_std": "" if r.top1.std is None else repr(r.top1.std),
            "top5_mean": repr(r.top5.mean), "top5_std": "" if r.top5.std is None else repr(r.top5.std),
            "params": r.params, "macs": r.macs,
            "train_seconds_mean": "" if r.train_seconds is None else repr(r.train_seconds.mean),
            "train_seconds_std": "" if r.train_seconds is None or r.train_seconds.std is None
            else repr(r.train_seconds.std),
            "images_per_second_mean": "" if r.images_per_second is None else repr(r.images_per_second.mean),
            "baseline": c.baseline if c else "", "delta_top1": repr(c.delta) if c else "",
            "ci_low": repr(c.low) if c else "", "ci_high": repr(c.high) if c else "",
            "verdict": c.verdict if c else "", "runs": ";".join(ids[run.root] for run in r.variant.runs),
        })
    return buf.getvalue()
