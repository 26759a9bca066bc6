"""``build_report``: records -> tables, figures and the written report in one folder.

Layout of the output folder (``<ds>/`` only with several datasets)::

    report.md                     the written report (with a section per reproduction, ``reproduce.json``,
                                  found under the reported paths)
    tables/[<ds>/]<study>.{md,tex,csv}
    figures/[<ds>/]<study>/<kind>.{png,svg}
    figures/[<ds>/]gradcam-<run>.{png,svg}
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .. import CifarlabError
from ..io import atomic_open
from ..run import FinishedRun, RunFolder, finished_runs, load_finished, read_reproduction, read_result, run_status
from ..run.folder import METRICS, REPRODUCE, RESULT, find_run_folders
from . import budget, figures as fg
from .calibration import reliability_diagram
from .records import by_dataset
from .summary import Row, Table, build_tables
from .tables import csv_text, latex, markdown
from .writeup import FigureSet, Section, Writer, headline_block, report_markdown, results_page, results_page_empty


class ReportOptions(BaseModel):
    """What to report and how."""

    model_config = ConfigDict(extra="forbid")

    paths: list[Path] = Field(min_length=1, description="run folders, study folders or results/")
    out: Path
    split_by_dataset: bool = Field(False, description="one section per dataset instead of refusing mixed data")
    baselines: list[str] = Field(default_factory=list, description="variant or model names to compare against")
    focus: str | None = Field(None, description="variant shown in the error figures; default: the most accurate")
    gradcam: list[Path] = Field(default_factory=list, description="run folders to draw Grad-CAM examples for")
    gradcam_images: int = Field(8, ge=1, le=16)
    note: str | None = Field(None, description="a paragraph under the report's title (e.g. a smoke-budget banner)")


def _write_text(path: Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _focus_row(table: Table, name: str | None) -> Row:
    """The row named ``name`` (variant or model) when the table has it, else the most accurate."""
    named = [r for r in table.rows if name in (r.name, r.variant.model)]
    return named[0] if named else max(table.rows, key=lambda r: r.top1.mean)


def _draw(table: Table, focus: Row, folder: Path) -> FigureSet:
    figs = FigureSet()

    def add(kind: str, paths: list[Path] | None, why: str) -> None:
        if paths:
            figs.paths[kind] = paths[0]
        else:
            figs.missing[kind] = why

    if focus.baseline is not None:
        baseline = next(r for r in table.rows if r.variant is focus.baseline)
    else:
        baseline = next((r for r in table.rows if r.is_baseline and r is not focus), None)
    no_preds = "the records carry no per-image test predictions"
    add("accuracy_bars", fg.accuracy_bars(table, folder / "accuracy_bars"), "")
    add("delta_forest", fg.delta_forest(table, folder / "delta_forest"), "no variant has a baseline to compare with")
    add("accuracy_vs_params", fg.accuracy_vs_params(table, folder / "accuracy_vs_params"), "")
    add("accuracy_vs_macs", fg.accuracy_vs_macs(table, folder / "accuracy_vs_macs"), "")
    add("accuracy_vs_time", fg.accuracy_vs_time(table, folder / "accuracy_vs_time"), "no run recorded its time")
    add("training_curves", fg.training_curves(table, folder / "training_curves"), f"no run folder has {METRICS}")
    add("confusion", fg.confusion_matrix(focus, folder / "confusion"), no_preds)
    if table.dataset == "cifar100":
        add("superclass_confusion", fg.superclass_confusion(focus, folder / "superclass_confusion"),
            "the records' superclass labels follow neither the official CIFAR-100 mapping nor the synthetic one, "
            "or they carry no per-image predictions")
        add("per_superclass", fg.per_superclass_accuracy(focus, baseline, folder / "per_superclass"),
            "the records carry no per-superclass accuracy")
    add("per_class", fg.per_class_accuracy(focus, baseline, folder / "per_class"),
        "the records carry no per-class accuracy")
    add("reliability", reliability_diagram(focus, folder / "reliability"), "the records carry no calibration bins")
    return figs


def _gradcam(run_dir: Path, folder: Path, n: int, runs: list[FinishedRun]) -> tuple[FinishedRun | None, Path, dict]:
    from .gradcam import gradcam_figure  # builds the model: the only part of a report that imports torch

    record = load_finished(run_dir)
    png = gradcam_figure(run_dir, folder / f"gradcam-{_slug(run_dir.parent.name + '-' + run_dir.name)}", n)[0]
    known = next((r for r in runs if r.root.resolve() == run_dir.resolve()), None)
    return known, png, record.record


def reproductions(paths: list[Path]) -> list[dict]:
    """The ``reproduce.json`` records (``cifarlab reproduce --out``) at or below the reported folders, validated."""
    folders = find_run_folders([p for p in paths if p.is_dir()], marker=REPRODUCE)
    return [read_reproduction(RunFolder(f)) for f in folders]


def reproduction_sections(records: list[dict]) -> str:
    """The report's reproduction sections, one per ``reproduce.json``."""
    from ..reproduce.render import summary_markdown

    return "".join("\n" + summary_markdown(rec, level=2) for rec in records)


def build_report(opts: ReportOptions) -> tuple[Path, list[Section]]:
    """Write the report folder; returns the path of report.md and the sections it holds."""
    runs, found = finished_runs(opts.paths), reproductions(opts.paths)
    if not runs and found:
        return _write_text(opts.out / "report.md", "# Report\n" + reproduction_sections(found)), []
    if not runs:
        raise CifarlabError(f"no {RESULT} under {', '.join(map(str, opts.paths))}")
    groups = by_dataset(runs, opts.split_by_dataset)
    out = opts.out
    gradcam_keys = {}
    for g in opts.gradcam:
        if run_status(RunFolder(g)).state != "done":
            raise CifarlabError(f"--gradcam {g}: not a finished run folder")
        rec = read_result(RunFolder(g))
        key = (rec.get("dataset"), rec.get("dataset_fingerprint"))
        if key not in groups:
            raise CifarlabError(f"--gradcam {g}: its data ({key[0]}, {key[1]}) is not among the reported runs")
        gradcam_keys.setdefault(key, []).append(g)
    tables_by_data = {key: build_tables(ds_runs, opts.baselines) for key, ds_runs in groups.items()}
    names = {n for ts in tables_by_data.values() for t in ts for r in t.rows for n in (r.name, r.variant.model)}
    for flag, wanted in (("--focus", [opts.focus] if opts.focus else []), ("--baseline", opts.baselines)):
        for name in wanted:
            if name not in names:
                raise CifarlabError(f"{flag} {name}: no such variant or model among the runs; choose from "
                                    f"{', '.join(sorted(names))}")
    sections = []
    for (dataset, fp), ds_runs in groups.items():
        sub = Path(_slug(f"{dataset}-{fp[:16]}")) if len(groups) > 1 else Path()
        tables = tables_by_data[(dataset, fp)]
        figs, files, focus = {}, {}, {}
        for t in tables:
            tdir = out / "tables" / sub
            files[t.slug] = {"csv": _write_text(tdir / f"{t.slug}.csv", csv_text(t)),
                             "tex": _write_text(tdir / f"{t.slug}.tex", latex(t)),
                             "md": tdir / f"{t.slug}.md"}
            _write_text(files[t.slug]["md"], f"# {t.title} — {t.dataset} (fingerprint {t.fingerprint})\n\n"
                        + markdown(t, tdir))
            focus[t.slug] = _focus_row(t, opts.focus)
            figs[t.slug] = _draw(t, focus[t.slug], out / "figures" / sub / t.slug)
        cams = [_gradcam(g, out / "figures" / sub, opts.gradcam_images, ds_runs)
                for g in gradcam_keys.get((dataset, fp), [])]
        sections.append(Section(dataset, fp, ds_runs, tables, figs, files, focus, cams))
    text = report_markdown(sections, out, opts.note) + reproduction_sections(found)
    return _write_text(out / "report.md", text), sections


REPORT_FOLDERS = {budget.REFERENCE: "reference", budget.REDUCED: "reduced-budget", budget.SMOKE: "smoke"}
SMOKE_NOTE = ("> **Smoke runs**: synthetic data, a training subset or fewer epochs than the model's recipe. They "
              "show that the pipeline runs end to end; their accuracies and the verdicts of their comparisons say "
              "nothing about the methods.")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def _fresh(folder: Path) -> Path:
    """Remove a report folder this function wrote before (it holds report.md), so no stale figure stays."""
    if (folder / "report.md").is_file():
        shutil.rmtree(folder)
    return folder


def write_results_page(results: Path, report_out: Path, page: Path,
                       readme: Path | None = None) -> tuple[Path, dict[str, Path]]:
    """The results page (docs/results.md): the headline, the rule that sorts records by budget, then references,
    reduced-budget references and smoke runs, each with its tables and a full report under ``report_out/<class>``;
    with no records, a page that says so. ``readme``: also rewrite the headline between its results markers.
    Returns the page and the reports by budget class."""
    runs = finished_runs([results]) if results.is_dir() else []
    budgets = {r.root: budget.classify(r, results) for r in runs}
    groups: dict[str, list[Section]] = {}
    reports: dict[str, Path] = {}
    for kind in budget.KINDS:
        members = [r.result_path for r in runs if budgets[r.root].kind == kind]
        if members:
            reports[kind], groups[kind] = build_report(ReportOptions(
                paths=members, out=_fresh(report_out / REPORT_FOLDERS[kind]), split_by_dataset=True,
                note=SMOKE_NOTE if kind == budget.SMOKE else None))
    if readme is not None:
        write_readme_headline(readme, page, groups)
    if not runs:
        return _write_text(page, results_page_empty(results, report_out, page)), reports
    return _write_text(page, results_page(groups, reports, budgets, results, report_out, page)), reports


def write_readme_headline(readme: Path, page: Path, groups: dict[str, list[Section]]) -> Path:
    """Replace the text between the README's results markers with the headline (links relative to the README)."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise CifarlabError(f"{readme}: no {README_START} ... {README_END} block to write the headline into")
    w = Writer(readme.parent)
    block = "\n".join(["", f"Headline result, generated by `make results` from the run records (all of them: "
                            f"[{w.rel(page)}]({w.rel(page)})):", "", *headline_block(groups, w), ""])
    return _write_text(readme, text[:start + len(README_START)] + block + text[end:])
