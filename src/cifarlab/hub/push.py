"""``cifarlab push``: the upload folder of a finished run (weights, model config, training config, record, metrics
and a generated model card) and its upload to a Hub model repo.

Everything copied from the run folder is read through its validating readers (never by following a link), so
an upload holds only the run's own files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .. import CifarlabError, __version__
from ..run import RunFolder, load_finished, read_config, read_metrics
from ..run.folder import MAX_BYTES, METRICS, RESULT
from .card import model_card
from .saved import REPO_ID, first_line, hub_offline, load_run, network_errors, save_with_config

CARD_FILE = "README.md"
TRAINING_CONFIG_FILE = "training_config.json"  # the run's training config: what `cifarlab reproduce` re-trains


def build_upload_folder(run_dir: str | Path, folder: str | Path, repo_id: str) -> list[str]:
    """Write what ``push`` uploads for a finished run into ``folder``; returns the file names."""
    run_dir, out = Path(run_dir), RunFolder(folder)
    if out.root.exists() and any(out.root.iterdir()):
        raise CifarlabError(f"{out.root} is not empty; give a new or empty folder to write the upload into")
    pre, epoch, ema = load_run(run_dir)
    src = RunFolder(run_dir)
    run = load_finished(run_dir)
    read_metrics(src)  # the record and the metrics are validated, then copied as they are
    save_with_config(pre.model, out.root, pre.config)
    out.write_json(TRAINING_CONFIG_FILE, obj=read_config(src).model_dump(mode="json"))
    for name in (RESULT, METRICS):
        if src.is_file(name):
            with out.open_write(name, mode="wb") as f:
                f.write(src.read_bytes(name, limit=MAX_BYTES[name]))
    with out.open_write(CARD_FILE) as f:
        f.write(model_card(run, pre.config, repo_id, epoch, ema))
    return out.listdir()


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id) or len(repo_id.split("/")[1]) > 96:
        raise CifarlabError(f"--repo-id {repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.')")


def check_can_upload() -> None:
    from huggingface_hub import get_token

    if hub_offline():
        raise CifarlabError("offline mode (HF_HUB_OFFLINE=1): nothing uploaded; unset it, or use --dry-run to only "
                            "write the folder")
    if get_token() is None:
        raise CifarlabError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or use --dry-run)")


def upload_folder(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create (or reuse) the model repo and upload ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(library_name="cifarlab", library_version=__version__)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise CifarlabError(f"{repo_id} already exists and is public; --private cannot make it private "
                                f"(change it in the repo settings, or push to a new name)")
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=message)
    except network_errors() as e:
        raise CifarlabError(f"upload to {repo_id} failed ({type(e).__name__}): {first_line(e)}") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
             out: str | Path | None = None, message: str | None = None) -> tuple[Path, list[str], str | None]:
    """Build the upload folder of a finished run and upload it (unless ``dry_run``).

    Returns (folder, file names, commit URL or None). Without ``out`` the folder is temporary: a dry
    run keeps it, an upload (or a failure) removes it.
    """
    check_repo_id(repo_id)
    if not dry_run:
        check_can_upload()
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="cifarlab-push-"))
    keep = False
    try:
        files = build_upload_folder(run_dir, folder, repo_id)
        keep = dry_run
        url = None if dry_run else upload_folder(folder, repo_id, private,
                                                 message or f"cifarlab push of {Path(run_dir).name}")
    finally:
        if out is None and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return folder, files, url
