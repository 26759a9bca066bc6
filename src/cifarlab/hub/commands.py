"""``cifarlab push`` and ``cifarlab predict``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import CifarlabError
from .predict import predict
from .push import push_run
from .saved import load_pretrained


def cmd_push(args: argparse.Namespace) -> int:
    folder, files, url = push_run(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                                  out=args.out, message=args.message)
    if args.dry_run:
        print(f"dry run: nothing uploaded; the folder for {args.repo_id} is {folder}")
        for name in files:
            print(f"  {name:<22} {(folder / name).stat().st_size:>12,} bytes")
    else:
        print(f"uploaded {len(files)} files ({', '.join(files)}) to {args.repo_id}"
              f"{' (private)' if args.private else ''}: {url}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CifarlabError(f"no such image file: {', '.join(missing)}")
    if args.top < 1:
        raise CifarlabError("--top must be at least 1")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pre = load_pretrained(args.source, device=device, revision=args.revision)
    out = predict(pre, args.images, args.top)
    if args.json:
        print(json.dumps({"model": pre.config.model, "source": pre.source, "predictions": out}, indent=1))
        return 0
    for row in out:
        print(row["image"])
        for t in row["top"]:
            print(f"  {t['probability']:8.2%}  {t['class']}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("push", help="upload a finished run to the Hugging Face Hub with a generated model card")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--repo-id", required=True, help="USER/NAME (or ORG/NAME) of the model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded, print its path")
    p.add_argument("--out", help="folder to write the upload into (default: a new temporary folder)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)

    q = sub.add_parser("predict", help="top-5 classes for image files, with a run folder, a saved folder or a Hub repo")
    q.add_argument("source", metavar="RUN_DIR_OR_REPO")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    q.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_predict)
