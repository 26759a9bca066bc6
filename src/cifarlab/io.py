"""Atomic file writes (temp file in the same folder, fsync, rename: readers never see half a file) and
the readers of JSON and YAML documents from users."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import yaml

from . import CifarlabError

MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a damaged file raises ``ValueError`` (nesting too deep for the parser included)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None


def read_json_lines(path: str | Path) -> list[Any]:
    """The JSON values of a JSON-lines file such as ``metrics.jsonl``, up to its first unreadable line (the torn
    last line of a killed writer); blank lines are skipped, a missing file has none."""
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (ValueError, RecursionError):
            break
    return rows


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a run config, a run record, ...); anything else raises one
    :class:`CifarlabError` that names the file and ``what`` it should have been."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise CifarlabError(f"{path}: not a readable {what} ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CifarlabError(f"{path}: not a {what} (expected a JSON object)")
    return data


def _flow_depth(source: str | bytes) -> int:
    """The deepest nesting of brackets and braces in a YAML document (quotes ignored: an upper bound in practice)."""
    depth = deepest = 0
    for m in re.finditer(rb"[\[{\]}]" if isinstance(source, bytes) else r"[\[{\]}]", source):
        depth += 1 if m.group() in ("[", "{", b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def load_yaml(source: str | bytes, error: str) -> Any:
    """``yaml.safe_load`` of an untrusted document (no tags that build Python objects) whose nesting and
    alias-expanded size are bounded; anything else raises ``CifarlabError(error + " (why)")``."""
    if _flow_depth(source) > MAX_YAML_DEPTH:  # PyYAML's scanner is quadratic in the depth of [ ] and { }
        raise CifarlabError(f"{error} (nested more than {MAX_YAML_DEPTH} brackets deep)")
    try:
        value = yaml.safe_load(source)
    except yaml.YAMLError as e:  # its problem names a refused tag, e.g. python/object/apply:os.system
        mark, problem = getattr(e, "problem_mark", None), " ".join(str(getattr(e, "problem", "") or "").split())
        where = f" (line {mark.line + 1})" if mark else ""
        raise CifarlabError(error + where + (f": {problem[:160]}" if problem else "")) from None
    except RecursionError:
        raise CifarlabError(f"{error} (nested too deeply)") from None
    if count_values(value, MAX_YAML_VALUES) > MAX_YAML_VALUES:  # aliases share nodes: small until a reader walks them
        raise CifarlabError(f"{error} (more than {MAX_YAML_VALUES:,} values once its aliases are expanded)")
    return value


def count_values(value: Any, limit: int) -> int:
    """The values in a parsed YAML or JSON document (a mapping counts itself, its keys and its values), counted
    with shared nodes once per reference (as a reader walks them) and up to ``limit + 1`` only."""
    stack, count = [value], 0
    while stack and count <= limit:
        x = stack.pop()
        count += 1
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return count


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
