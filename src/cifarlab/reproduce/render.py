"""The Markdown of a reproduction, from its ``reproduce.json`` object: what the command prints and saves as
``reproduce.md``, and the section ``cifarlab report`` adds. Every number comes from the record."""

from __future__ import annotations

from typing import Any

from ..report.records import data_source_text


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f} pp"


def cell(text: Any) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def audit_table(checks: list[dict[str, Any]]) -> list[str]:
    """One line per check: check, status, reason, expected effect on results (and the runs, for several)."""
    runs = any(c.get("runs") for c in checks)
    header = ["check", *(["runs"] if runs else []), "status", "reason", "expected effect of a difference"]
    return table(header, [[c["name"], *([c.get("runs", "")] if runs else []), f"**{c['status']}**", c["reason"],
                           c.get("effect", "")] for c in checks])


def _counts(checks: list[dict[str, Any]]) -> str:
    return ", ".join(f"{sum(c['status'] == s for c in checks)} {s}" for s in ("ok", "differs", "refused"))


def same_seed_lines(items: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in items:
        what = f"`{s['variant']}` seed {s['seed']}: top-1 {pct(s['recorded_top1'])} recorded, {pct(s['new_top1'])} now"
        if s["differ"] is None:
            lines.append(f"- {what}; not compared image by image: {s['note']}.")
        elif s["differ"] == 0:
            lines.append(f"- {what}; **per-image identical** ({s['images']:,} test images).")
        else:
            lines.append(f"- {what}; **{s['differ']:,} of {s['images']:,} predictions differ**: "
                         f"{s['recorded_only']:,} images right only in the record, {s['new_only']:,} only now "
                         f"(exact McNemar p = {s['p_value']:.3g}).")
        setup = ("the same device, versions, code and training step" if s["same_setup"] else
                 "differs in " + "; ".join(s["setup_differences"]))
        lines[-1] += f" Setup: {setup}."
    return lines


def interval_lines(items: list[dict[str, Any]], figure_name: str) -> list[str]:
    lines = []
    for i in items:
        q, k = f"t({i['df']:g})" if i["df"] is not None else "z", len(i["values"])
        gap = "" if i["gap_sd"] is None else f", {i['gap_sd']:+.1f} seed SDs from their mean"
        lines.append(f"- `{i['variant']}`: {figure_name} {pct(i['figure'])} against the 95 % prediction interval "
                     f"[{pct(i['low'])}, {pct(i['high'])}] of a single run (mean {pct(i['mean'])} of {k} new "
                     f"run{'s' * (k != 1)} ± {q} = {i['quantile']:.2f} x {100 * i['sd']:.2f} pt x sqrt(1 + 1/{k}); "
                     f"SD: {i['sd_source']}): **{i['verdict']}**{gap}.")
    return lines


def study_table(items: list[dict[str, Any]]) -> list[str]:
    def delta(low, value, high) -> str:
        return "-" if value is None else pp(value) + ("" if low is None else f" [{pp(low)}, {pp(high)}]")

    return table(["variant", "baseline", "top-1 recorded", "top-1 now", "Δ recorded [95% CI]", "verdict recorded",
                  "Δ now [95% CI]", "verdict now", "changed"],
                 [[s["variant"], s["baseline"] or "-", f"{pct(s['recorded_top1'])} (n={s['recorded_seeds']})",
                   f"{pct(s['new_top1'])} (n={s['new_seeds']})",
                   delta(s["recorded_low"], s["recorded_delta"], s["recorded_high"]), s["recorded_verdict"],
                   delta(s["new_low"], s["new_delta"], s["new_high"]), s["new_verdict"],
                   "**yes**" if s["changed"] else "no"] for s in items])


def _head(rec: dict[str, Any], h: str) -> list[str]:
    src = rec["source"]
    lines = [f"{h} Reproduction of `{src['given']}`" if src["kind"] != "claim" else f"{h} Checking a claim: "
             f"`{src['given']}`", "", f"**Verdict: {rec['verdict']}**", ""]
    here = rec["here"]
    n = len(src["runs"])
    lines.append(f"Source: {src['kind']} `{src['given']}`" + (f" ({n} recorded run{'s' * (n != 1)})" if n else "")
                 + f". Data: {data_source_text(rec['data'], rec.get('data_kind')) if rec['data'] else 'not read'}. "
                 f"Here: {here.get('device') or 'device not probed'}, torch {here.get('torch')}, cifarlab "
                 f"{here.get('cifarlab')} at `{here.get('git_commit')}`. Written {rec['created_at']}.")
    return lines + [""] + [f"- {note}" for note in src.get("notes", [])] + ([""] if src.get("notes") else [])


def summary_markdown(rec: dict[str, Any], level: int = 1) -> str:
    """The summary of a ``reproduce.json`` object, its headings at ``level``."""
    h, sub = "#" * level, "#" * (level + 1)
    lines = _head(rec, h)
    if rec["checks"]:
        lines += [f"{sub} Audit ({_counts(rec['checks'])})", "", *audit_table(rec["checks"]), ""]
    if rec["runs"]:
        b = rec["budget"]
        done = sum(r["state"] == "done" for r in rec["runs"])
        lines += [f"{sub} Re-training", "", f"{done} of {len(rec['runs'])} runs finished (seeds {b.get('seeds')}, "
                  f"{b.get('epochs')} epochs each) on {b.get('device') or '-'}; "
                  f"{(b.get('train_seconds') or 0) / 60:.1f} min of training in all.", "",
                  *table(["run", "seed", "state", "top-1"],
                         [[r["run_id"], r["seed"], r["state"], pct(r["top1"])] for r in rec["runs"]]), ""]
    if rec["same_seed"]:
        lines += [f"{sub} The same seed, image by image", "", *same_seed_lines(rec["same_seed"]), ""]
    if rec["intervals"]:
        name = "the claim" if rec["claim"] else "the recorded top-1"
        lines += [f"{sub} Across seeds", "", *interval_lines(rec["intervals"], name), ""]
    if rec["claim"] and rec["claim"].get("note"):
        lines += [rec["claim"]["note"], ""]
    if rec["study"]:
        changed = [s["variant"] for s in rec["study"] if s["changed"]]
        lines += [f"{sub} The study's verdicts, re-derived from the new seeds", "", *study_table(rec["study"]), "",
                  f"Verdicts that changed: {', '.join(changed) if changed else 'none'}.", ""]
    return "\n".join(lines).rstrip() + "\n"
