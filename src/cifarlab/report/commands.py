"""``cifarlab report PATH... --out DIR``: tables, figures and a written report from run records."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from .. import CifarlabError
from ..config import format_validation_error
from ..run.folder import RESULT, STUDY


def cmd_report(args: argparse.Namespace) -> int:
    from .build import ReportOptions, build_report, write_results_page

    if args.page:
        if len(args.paths) != 1:
            raise CifarlabError("--page takes exactly one PATH (the results folder)")
        readme = Path(args.readme) if args.readme else None
        page, reports = write_results_page(Path(args.paths[0]), Path(args.out), Path(args.page), readme)
        wrote = [str(page), *map(str, reports.values())] + ([str(readme)] if readme else [])
        print("wrote " + ", ".join(wrote) + ("" if reports else f" (no run records under {args.paths[0]})"))
        return 0
    if args.readme:
        raise CifarlabError("--readme goes with --page")
    try:
        opts = ReportOptions(paths=args.paths, out=args.out, split_by_dataset=args.split_by_dataset,
                             baselines=args.baseline or [], focus=args.focus, gradcam=args.gradcam or [],
                             gradcam_images=args.gradcam_images)
    except ValidationError as err:
        raise CifarlabError(format_validation_error(err, "report")) from None
    report, sections = build_report(opts)
    n_runs = sum(len(s.runs) for s in sections)
    n_rows = sum(len(t.rows) for s in sections for t in s.tables)
    print(f"{n_runs} runs, {n_rows} variants -> {report} (tables/ and figures/ beside it)")
    return 0


def add_commands(sub) -> None:
    r = sub.add_parser("report", help="tables, figures and a written report from run records")
    r.add_argument("paths", nargs="+", metavar="PATH", help="run folders, study folders or results/ "
                                                            f"(searched for {RESULT})")
    r.add_argument("--out", required=True, help="folder for report.md, tables/ and figures/")
    r.add_argument("--split-by-dataset", action="store_true",
                   help="one section per dataset (and fingerprint) instead of refusing mixed data")
    r.add_argument("--baseline", action="append", metavar="NAME",
                   help="variant or model to compare against (repeat for one per tier); default: the baselines "
                        f"in the study's {STUDY}, else a variant named 'baseline', else the plain ResNets "
                        "(eca_resnet56 -> resnet56)")
    r.add_argument("--focus", metavar="NAME", help="variant for the confusion and per-class figures "
                                                   "(default: the most accurate)")
    r.add_argument("--gradcam", action="append", metavar="RUN_DIR", help="draw Grad-CAM examples for this run")
    r.add_argument("--gradcam-images", type=int, default=8, help="test images per Grad-CAM figure (default 8)")
    r.add_argument("--page", metavar="FILE", help="write the results page (e.g. docs/results.md) for "
                                                  "the one PATH; an empty PATH gives a page that says so")
    r.add_argument("--readme", metavar="FILE", help="with --page: also rewrite the headline between FILE's "
                                                    "<!-- results:start --> and <!-- results:end --> markers")
    r.set_defaults(func=cmd_report)
