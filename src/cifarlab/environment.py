"""What a record says about where it was made: device, software versions and the code's commit.

One home for the run records, the benchmarks and ``reproduce``'s audit. Versions come from the installed
packages' metadata, so describing the software imports neither torch nor ``datasets``; only the device needs torch.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cifarlab

if TYPE_CHECKING:
    import torch

PACKAGES = ("torch", "accelerate", "datasets", "transformers")


def git_commit() -> str | None:
    """The commit of the cifarlab checkout in use, with ``+dirty`` when tracked files are changed; None when the
    package is not in a git checkout (an installed wheel) or git is missing."""
    root = Path(cifarlab.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software() -> dict[str, Any]:
    """Python, platform, the training stack's versions and the commit, without importing the stack."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{p: package_version(p) for p in PACKAGES}, "cifarlab": cifarlab.__version__,
            "git_commit": git_commit()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing brackets); a no-op on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """The device and the software a run or a benchmark ran on (``torch`` as torch reports itself, with its CUDA
    build)."""
    import torch

    return {"device": device_name(device), "device_type": device.type, **software(), "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
