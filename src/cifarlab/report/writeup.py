"""The written report: Markdown shaped like a project report, every number generated from the records.

Sections: setup, methods compared, comparison, ablations, efficiency, training and
errors, findings. A number is followed by links to the result.json files it comes
from. A gain or a loss is claimed only when the stats module calls the difference
demonstrated (>= 3 seeds per side, 95 % CI excluding zero); otherwise the text says
"no demonstrated difference".
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import CifarlabError
from ..data.meta import DATASETS
from ..model_catalog import model_info
from ..run import FinishedRun
from ..run.folder import RESULT
from ..studies import stats
from . import budget
from .calibration import other_test_sets
from .figures import pareto_front, time_unit
from .records import Variant, experiment_config, source_text
from .summary import Row, Table
from .tables import markdown, pct, run_link, signed


@dataclass
class FigureSet:
    """Figure files of one table (PNG paths; an SVG sits beside each), keyed by kind; missing kinds say why."""

    paths: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


@dataclass
class Section:
    """One dataset's part of the report."""

    dataset: str
    fingerprint: str
    runs: list[FinishedRun]
    tables: list[Table]
    figures: dict[str, FigureSet]  # by table slug
    table_files: dict[str, dict[str, Path]]  # by table slug: md/tex/csv
    focus: dict[str, Row]  # by table slug: the variant the error figures show
    gradcam: list[tuple[FinishedRun | None, Path, dict]] = field(default_factory=list)  # (run, png, record)


class Writer:
    """Renders numbers with links to their runs, relative to the report's folder."""

    def __init__(self, link_from: Path):
        self.link_from = link_from

    def _links(self, runs: list[FinishedRun]) -> str:
        return " ".join(f"[s{r.seed}]({run_link(r.result_path, self.link_from)})" for r in runs)

    def cite(self, runs: list[FinishedRun]) -> str:
        return f"<sup>{self._links(runs)}</sup>"

    def cite_pair(self, row: Row, base: Variant) -> str:
        """Links to the runs of a baseline and of a variant, each labelled by variant."""
        parts = [(base.name, base.runs), (row.name, row.variant.runs)]
        return "<sup>" + "; ".join(f"{name}: {self._links(runs)}" for name, runs in parts) + "</sup>"

    def num(self, text: str, runs: list[FinishedRun]) -> str:
        return f"{text} {self.cite(runs)}"

    def rel(self, path: Path) -> str:
        return run_link(path, self.link_from)

    def image(self, path: Path, alt: str) -> str:
        return f"![{alt}]({self.rel(path)})"


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _fmt_int_delta(d: int) -> str:
    return f"{d:+,}"


def _rel_pct(d: float, base: float) -> str:
    r = 100 * d / base if base else float("nan")
    return f"{r:+.1f} %" if abs(r) >= 0.1 or r == 0 else f"{r:+.3f} %"


def _macs_delta(d: int) -> str:
    return f"{d / 1e6:+.2f} M MACs" if abs(d) >= 10_000 else f"{d:+,} MACs"


def _common_and_varying(runs: list[FinishedRun]) -> tuple[dict[str, Any], list[str]]:
    configs = [experiment_config(r) for r in runs]
    keys = sorted({k for c in configs for k in c})
    common, varying = {}, []
    for k in keys:
        vals = {json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}
        if len(vals) == 1:
            common[k] = configs[0].get(k)
        else:
            varying.append(k)
    return common, varying


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in sorted(v.items())) + "}" if v else "{}"
    return "none" if v is None else str(v)


def setup(section: Section, w: Writer) -> list[str]:
    runs = section.runs
    r0 = runs[0].record
    out = ["## Setup", ""]
    sizes = Counter(json.dumps(r.record.get("split_sizes"), sort_keys=True) for r in runs)
    size_text = "; ".join(", ".join(f"{k} {v:,}" for k, v in json.loads(s).items()) for s in sizes)
    out.append(f"- **Data**: `{section.dataset}` from {source_text(r0)}, "
               f"fingerprint `{section.fingerprint}`; splits: {size_text}.")
    if r0.get("source_kind") == "synthetic":
        out.append("- **These runs used synthetic data**: the numbers below exercise the pipeline and are not "
                   "CIFAR results.")
    common, varying = _common_and_varying(runs)
    budget = ["epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs",
              "label_smoothing", "ema_decay"]
    shown = [f"{k} {_value(common[k])}" for k in budget if k in common]
    aug = [f"{k.removeprefix('augment.')} {_value(v)}" for k, v in common.items() if k.startswith("augment.")]
    if shown:
        out.append(f"- **Training, the same for every run**: {', '.join(shown)}"
                   + (f"; augmentation: {', '.join(aug)}" if aug else "") + ".")
    if varying:
        knobs = [k for k in varying if k != "model"]
        out.append(f"- **Settings that differ between runs**: {', '.join(f'`{k}`' for k in knobs)}."
                   if knobs else "- **Only the model differs between runs.**")
    unfair = [k for k in ("epochs", "data", "dataset", "batch_size") if k in varying]
    if unfair:
        out.append(f"- **Not one budget**: {', '.join(unfair)} differ between runs, so accuracy differences mix "
                   f"method and budget.")
    selection = Counter(r.record.get("selection", "final epoch") for r in runs)
    out.append("- **Reported accuracy**: test top-1/top-5 at the "
               + " / ".join(f"{s} ({n} runs)" for s, n in selection.items())
               + "; never the best epoch on the test set.")
    devices = Counter(f"{r.record.get('device', '?')} x{r.record.get('world_size', 1)}" for r in runs)
    out.append("- **Hardware**: " + "; ".join(f"{d} ({n} runs)" for d, n in devices.items()) + ".")
    torch_versions = sorted({str(r.record.get("environment", {}).get("torch")) for r in runs} - {"None"})
    if torch_versions:
        out.append(f"- **Software**: torch {', '.join(torch_versions)}; git commits "
                   f"{', '.join(sorted({str(r.record.get('git_commit', '?'))[:12] for r in runs}))}.")
    conv = sorted({r.record.get("mac_convention", "") for r in runs} - {""})
    out.append(f"- **Costs**: parameters counted in full; MACs: {'; '.join(conv) or 'as recorded'}. "
               "Train time is the whole wall time of a run (decode, evaluation and checkpoints included); "
               "images/s counts training steps only.")
    out.append(f"- **Statistics**: mean ± std over seeds; the difference to a baseline has a "
               f"{100 * stats.CI_LEVEL:.0f} % CI from Welch's t over the seeds' top-1 (about this test set; "
               f"the per-image noise of each run is part of the seed spread); a gain is claimed only with "
               f">= {stats.MIN_SEEDS_FOR_A_CLAIM} seeds per side and a CI that excludes zero. Where no difference "
               f"is demonstrated, the findings give the smallest one the seeds could detect at "
               f"{100 * stats.POWER:.0f} % power.")
    return out + [""]


def methods(section: Section, w: Writer) -> list[str]:
    out = ["## Methods compared", ""]
    for t in section.tables:
        if len(section.tables) > 1:
            out.append(f"**{t.title}**")
            out.append("")
        _, varying = _common_and_varying(t.runs)
        for r in t.rows:
            try:
                paper = model_info(r.variant.model).paper
            except CifarlabError:
                paper = "not in the registry"
            cfg = experiment_config(r.variant.runs[0])
            diffs = ", ".join(f"{k} = {_value(cfg.get(k))}" for k in varying if k != "model")
            tag = " — baseline" if r.is_baseline else ""
            out.append(f"- **{r.name}**{tag}: `{r.variant.model}` ({r.variant.family}, {r.variant.tier} tier; "
                       f"{paper}); {r.params:,} parameters, {r.macs / 1e6:.2f} M MACs"
                       + (f"; {diffs}" if diffs else "") + f"; seeds {', '.join(map(str, r.variant.seeds))}.")
        out.append("")
    return out


def claim_sentence(row: Row, w: Writer) -> str:
    """One sentence on a variant against its baseline."""
    c, b = row.comparison, row.baseline
    dparams = row.params - _param_count(b)
    dmacs = row.macs - _mac_count(b)
    cost = (f"{_fmt_int_delta(dparams)} parameters ({_rel_pct(dparams, _param_count(b))}) and "
            f"{_macs_delta(dmacs)} ({_rel_pct(dmacs, _mac_count(b))})")
    acc = w.num(f"{pct(row.top1)} %", row.variant.runs)
    diff = (f"{signed(c.delta)} points (95 % CI {signed(c.low)}..{signed(c.high)}) "
            + w.cite_pair(row, b))
    if c.real and c.delta > 0:
        verdict = f"**{row.name}** adds {diff} of top-1 over {b.name} for {cost}: a demonstrated gain"
    elif c.real:
        verdict = f"**{row.name}** changes top-1 by {diff} against {b.name}, with {cost}: a demonstrated loss"
    else:
        verdict = (f"**{row.name}** differs from {b.name} by {diff} of top-1, with {cost}: no demonstrated "
                   f"difference ({c.reason})")
    return f"- {verdict}. It reaches {acc} top-1 over {_seeds(row.top1.n)}."


def _param_count(v) -> int:
    return int(v.runs[0].record["params"])


def _mac_count(v) -> int:
    return int(v.runs[0].record["macs"])


def comparison(section: Section, w: Writer) -> list[str]:
    out = ["## Comparison", ""]
    for t in section.tables:
        files = section.table_files[t.slug]
        figs = section.figures[t.slug]
        out.append(f"### {t.title}")
        out.append("")
        out.append(f"Tables: [Markdown]({w.rel(files['md'])}), [LaTeX]({w.rel(files['tex'])}), "
                   f"[CSV]({w.rel(files['csv'])}). Top-1/top-5 in %, mean ± std over seeds; Δ in percentage points.")
        out.append("")
        out.append(markdown(t, w.link_from))
        for row in t.rows:
            if row.is_baseline:
                out.append(f"- Baseline **{row.name}** (`{row.variant.model}`) reaches "
                           f"{w.num(pct(row.top1) + ' %', row.variant.runs)} top-1 and {pct(row.top5)} % top-5 "
                           f"over {_seeds(row.top1.n)}.")
        for row in t.rows:
            if row.comparison is not None:
                out.append(claim_sentence(row, w))
        best = max(t.rows, key=lambda r: r.top1.mean)
        out.append(f"- Highest mean top-1: **{best.name}**, {w.num(pct(best.top1) + ' %', best.variant.runs)}.")
        out.append("")
        for kind, alt in (("accuracy_bars", "top-1 accuracy per variant"),
                          ("delta_forest", "difference to the baseline with 95 % CI")):
            if kind in figs.paths:
                out.append(w.image(figs.paths[kind], alt))
                out.append("")
    return out


def ablations(section: Section, w: Writer) -> list[str]:
    out = ["## Ablations", ""]
    found = False
    for t in section.tables:
        by_model: dict[str, list[Row]] = defaultdict(list)
        for r in t.rows:
            by_model[r.variant.model].append(r)
        for model, rows in by_model.items():
            if len(rows) < 2:
                continue
            found = True
            _, varying = _common_and_varying([run for r in rows for run in r.variant.runs])
            knobs = [k for k in varying if k != "model"]
            out.append(f"**`{model}`** ({t.title}): {len(rows)} configurations differing in "
                       f"{', '.join(f'`{k}`' for k in knobs) or 'nothing but the variant name'}.")
            out.append("")
            for r in rows:
                cfg = experiment_config(r.variant.runs[0])
                setting = ", ".join(f"{k} = {_value(cfg.get(k))}" for k in knobs)
                line = f"- {r.name} ({setting}): {w.num(pct(r.top1) + ' %', r.variant.runs)} top-1"
                if r.comparison is not None:
                    c = r.comparison
                    line += (f"; {signed(c.delta)} points vs {c.baseline} (95 % CI {signed(c.low)}..{signed(c.high)})"
                             f" {w.cite_pair(r, r.baseline)}: {c.verdict}")
                out.append(line + ".")
            out.append("")
    if not found:
        out += ["No ablations among these runs: every variant is a different model.", ""]
    return out


def efficiency(section: Section, w: Writer) -> list[str]:
    out = ["## Efficiency", ""]
    for t in section.tables:
        figs = section.figures[t.slug]
        if len(section.tables) > 1:
            out += [f"### {t.title}", ""]
        timed = [r for r in t.rows if r.train_seconds is not None]
        if timed:
            div, unit = time_unit(max(r.train_seconds.mean for r in timed))
            fastest = max((r for r in timed if r.images_per_second), key=lambda r: r.images_per_second.mean,
                          default=None)
            if fastest is not None:
                out.append(f"- Fastest training: **{fastest.name}** at "
                           f"{w.num(f'{fastest.images_per_second.mean:,.0f} images/s', fastest.variant.runs)} "
                           f"(training steps only).")
            front = pareto_front([r.train_seconds.mean for r in timed], [r.top1.mean for r in timed])
            names = [f"{timed[i].name} ({timed[i].train_seconds.mean / div:.1f} {unit}, "
                     f"{100 * timed[i].top1.mean:.2f} %)" for i in front]
            out.append(f"- Pareto front on training time (no other variant is both faster and more accurate): "
                       f"{', '.join(names)}.")
        pf = pareto_front([r.params for r in t.rows], [r.top1.mean for r in t.rows])
        out.append("- Pareto front on parameters: "
                   + ", ".join(f"{t.rows[i].name} ({t.rows[i].params:,}, {100 * t.rows[i].top1.mean:.2f} %)"
                               for i in pf) + ".")
        for row in t.rows:
            inf = [r.record.get("inference") or {} for r in row.variant.runs]
            lat = [i["latency_ms_batch1"] for i in inf if i.get("latency_ms_batch1") is not None]
            if lat:
                out.append(f"- {row.name}: batch-1 inference latency "
                           f"{w.num(f'{np.median(lat):.2f} ms (median over seeds)', row.variant.runs)}.")
        out.append("")
        for kind, alt in (("accuracy_vs_params", "accuracy vs parameters"), ("accuracy_vs_macs", "accuracy vs MACs"),
                          ("accuracy_vs_time", "accuracy vs training time")):
            if kind in figs.paths:
                out += [w.image(figs.paths[kind], alt), ""]
    return out


def errors(section: Section, w: Writer) -> list[str]:
    out = ["## Training curves and errors", ""]
    info = DATASETS[section.dataset]
    for t in section.tables:
        figs = section.figures[t.slug]
        if len(section.tables) > 1:
            out += [f"### {t.title}", ""]
        focus = section.focus[t.slug]
        if "training_curves" in figs.paths:
            out += [w.image(figs.paths["training_curves"], "training curves"), ""]
        means = _mean_per_class(focus)
        per_class = None if means is None else np.array([np.nan if v is None else v for v in means], dtype=float)
        if per_class is not None and np.isfinite(per_class).any():
            order = [i for i in np.argsort(per_class, kind="stable") if np.isfinite(per_class[i])]
            named = [f"{info.classes[i].replace('_', ' ')} ({100 * per_class[i]:.0f} %)" for i in order]
            out.append(f"- Errors of **{focus.name}** (the figures below; per-class accuracy is the mean over "
                       f"its seeds {w.cite(focus.variant.runs)}): hardest classes "
                       f"{', '.join(named[:5])}; easiest {', '.join(named[::-1][:5])}.")
            out.append("")
        for kind, alt in (("confusion", "confusion matrix"), ("superclass_confusion", "superclass confusion"),
                          ("per_class", "per-class accuracy"), ("per_superclass", "per-superclass accuracy"),
                          ("reliability", "reliability diagram")):
            if kind in figs.paths:
                out += [w.image(figs.paths[kind], alt), ""]
        for kind, why in figs.missing.items():
            out.append(f"- Not drawn: {kind.replace('_', ' ')} ({why}).")
        if figs.missing:
            out.append("")
    for run, png, record in section.gradcam:
        out.append(f"Grad-CAM of {record['model']} "
                   + (w.cite([run]) if run is not None else "") + ":")
        out += ["", w.image(png, f"Grad-CAM {record['model']}"), ""]
    return out


def _mean_per_class(row: Row) -> list[float | None] | None:
    lists = [r.record.get("per_class_accuracy") for r in row.variant.runs]
    if any(v is None for v in lists):
        return None
    out = []
    for vals in zip(*lists, strict=True):
        ok = [v for v in vals if v is not None]
        out.append(sum(ok) / len(ok) if ok else None)
    return out


def findings(section: Section, w: Writer) -> list[str]:
    out = ["## Findings", ""]
    gains, losses, none = [], [], []
    for t in section.tables:
        for r in t.rows:
            c = r.comparison
            if c is None:
                continue
            text = (f"**{r.name}** vs {c.baseline}: {signed(c.delta)} points (95 % CI {signed(c.low)}.."
                    f"{signed(c.high)}) {w.cite_pair(r, r.baseline)}, "
                    f"{_fmt_int_delta(r.params - _param_count(r.baseline))} parameters")
            (gains if c.real and c.delta > 0 else losses if c.real else none).append((text, c))
    if gains:
        out.append(f"Demonstrated gains (>= {stats.MIN_SEEDS_FOR_A_CLAIM} seeds per side, CI excluding zero):")
        out += [f"- {t}." for t, _ in gains] + [""]
    if losses:
        out.append("Demonstrated losses:")
        out += [f"- {t}." for t, _ in losses] + [""]
    if none:
        out.append(f"No demonstrated difference (the CI includes zero or there are fewer than "
                   f"{stats.MIN_SEEDS_FOR_A_CLAIM} seeds per side):")
        out += [f"- {t} — {c.reason}; {c.detectable}." for t, c in none] + [""]
    if not (gains or losses or none):
        out += ["No variant was compared with a baseline.", ""]
    elif not (gains or losses):
        out += ["No variant shows a demonstrated difference from its baseline at this budget and number of seeds.",
                ""]
    return out


def section_markdown(section: Section, w: Writer, heading_level: int) -> str:
    parts: list[str] = []
    for block in (setup, methods, comparison, ablations, efficiency, errors, other_test_sets, findings):
        parts += block(section, w)
    if heading_level > 2:
        parts = [("#" * (heading_level - 2)) + p if p.startswith("#") else p for p in parts]
    return "\n".join(parts)


def report_markdown(sections: list[Section], link_from: Path, note: str | None = None) -> str:
    w = Writer(link_from)
    n_runs = sum(len(s.runs) for s in sections)
    covers = "; ".join(f"`{s.dataset}` (fingerprint `{s.fingerprint}`)" for s in sections)
    head = ["# Report", "",
            f"Generated by `cifarlab report` from {n_runs} run records. It covers {covers}. "
            f"Every number is computed from the records; the links after a number open the {RESULT} files "
            "it comes from (s<k> = seed k).", ""] + ([note, ""] if note else [])
    if len(sections) == 1:
        return "\n".join(head) + "\n" + section_markdown(sections[0], w, 2) + "\n"
    body = []
    for s in sections:
        body += [f"# Dataset {s.dataset} (fingerprint {s.fingerprint})", "", section_markdown(s, w, 3), ""]
    return "\n".join(head + body) + "\n"


def _shown(path: Path) -> str:
    """A path as a page may show it: relative to the working directory, never this machine's absolute path."""
    return Path(os.path.relpath(path)).as_posix()


def _page_head(results: Path, report_out: Path, page: Path) -> list[str]:
    cmd = f"cifarlab report {_shown(results)} --out {_shown(report_out)} --page {_shown(page)}"
    return ["# Results", "",
            f"Generated from the run records committed under `{_shown(results)}` by `{cmd}` (`make results`); "
            "do not edit by hand: every number here comes from a record.", ""]


def results_page_empty(results: Path, report_out: Path, page: Path) -> str:
    return "\n".join(_page_head(results, report_out, page) + [
        f"No run records are committed under `{_shown(results)}` yet, so there are no results to show.", ""])


def _date(runs: list[FinishedRun]) -> str:
    dates = sorted(str(r.record["finished_at"])[:10] for r in runs if r.record.get("finished_at"))
    return dates[-1] if dates else "an unrecorded date"


def headline(kind: str, sections: list[Section], w: Writer) -> list[str]:
    """One bullet per variant of the headline class: budget, top-1 mean ± sd over seeds, time, device, runs, date."""
    title = budget.kind_title(kind, [r for s in sections for r in s.runs]).removesuffix(" (full budget)")
    title = title.removesuffix(" results").removesuffix(" (reduced budget)")
    out = []
    for s in sections:
        for t in s.tables:
            for row in t.rows:
                runs = row.variant.runs
                epochs = sorted({int(r.record["epochs"]) for r in runs if r.record.get("epochs")})
                full = budget.recipe_epochs(row.variant.model)
                ep = "/".join(map(str, epochs)) + (f" of the recipe's {full}" if kind == budget.REDUCED else "")
                devices = sorted({str(r.record.get("device", "?")) for r in runs})
                where = ", ".join(budget.device_short(d) for d in devices)
                t_runs = row.train_seconds
                spent = ""
                if t_runs is not None:
                    div, unit = time_unit(t_runs.mean)
                    spent = f", {t_runs.mean / div:.1f} {unit} of training per run (mean)"
                sd = "mean ± sd" if row.top1.n > 1 else "one run"
                links = ", ".join(f"[{r.root.name}]({w.rel(r.result_path)})" for r in runs)
                out.append(f"- **{title}** (real data, {where}, {ep} epochs, full training split): "
                           f"`{row.variant.model}`" + (f" ({row.name})" if row.name != row.variant.model else "")
                           + f" on `{s.dataset}` — top-1 **{pct(row.top1)} %** ({sd} over {_seeds(row.top1.n)})"
                           f"{spent} on {', '.join(f'`{d}`' for d in devices)}; runs {links}; "
                           f"finished {_date(runs)}.")
    return out


def headline_block(groups: dict[str, list[Section]], w: Writer) -> list[str]:
    """The results' headline: the full-budget references, else the reduced-budget ones, else a line saying none."""
    for kind in (budget.REFERENCE, budget.REDUCED):
        if kind in groups:
            return headline(kind, groups[kind], w)
    return ["- No reference records yet: every record is a smoke run (synthetic data, a training subset or fewer "
            "epochs than the model's recipe); no accuracy among them speaks for a method."]


def _smoke_banner(table: Table, budgets: dict[Path, budget.Budget]) -> str:
    reasons = sorted({why for r in table.runs for why in budgets[r.root].reasons})
    what = "verdicts" if any(row.comparison is not None for row in table.rows) else "accuracies"
    return (f"> **Smoke budget** ({'; '.join(reasons)}): this table checks that the pipeline runs end to end; "
            f"its {what} say nothing about the methods.")


def results_page(groups: dict[str, list[Section]], reports: dict[str, Path], budgets: dict[Path, budget.Budget],
                 results: Path, report_out: Path, page: Path) -> str:
    """The headline, the classification rule, then each budget class (references first) with its tables, links
    relative to the page's folder."""
    w = Writer(page.parent)
    out = _page_head(results, report_out, page) + ["## Headline", ""] + headline_block(groups, w) + [
        "", "## How records are classified", "", budget.RULE, ""]
    for kind in budget.KINDS:
        if kind not in groups:
            continue
        runs = [r for s in groups[kind] for r in s.runs]
        out += [f"## {budget.kind_title(kind, runs)}", ""]
        if kind == budget.SMOKE:
            out += ["> These runs trained on a smoke budget. They show that the pipeline runs end to end; "
                    "their accuracies and the verdicts of their comparisons say nothing about the methods.", ""]
        out += [f"Full report: [{w.rel(reports[kind])}]({w.rel(reports[kind])}).", ""]
        for s in groups[kind]:
            out += [f"### {s.dataset} — fingerprint `{s.fingerprint}`", "",
                    f"{_runs(len(s.runs))}; data from {source_text(s.runs[0].record)}.", ""]
            for t in s.tables:
                out += [f"#### {t.title}", ""]
                if kind == budget.SMOKE:
                    out += [_smoke_banner(t, budgets), ""]
                out += [markdown(t, page.parent)]
                if "accuracy_bars" in s.figures[t.slug].paths:
                    out += [w.image(s.figures[t.slug].paths["accuracy_bars"], f"top-1 accuracy, {t.title}"), ""]
    return "\n".join(out) + "\n"
