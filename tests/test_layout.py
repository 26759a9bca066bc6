"""The package's shape: imports flow one way (no circle, imports inside functions included), the run folder's file
names are spelled only in ``cifarlab.run``, and commands that only read records import no training stack."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cifarlab"
RUN_FILE_NAMES = ("config.json", "metrics.jsonl", "result.json", "error.json", "trackers.json", "attempts.json",
                  "study.json", "run.lock", "manifest.json", "state.pt", "reproduce.json")


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the cifarlab modules it imports anywhere in its body (functions included; imports only a type
    checker runs are left out). Importing ``a.b.c`` from outside package ``a.b`` also runs ``a.b``'s ``__init__``."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        here = name if _is_package(name) else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for a in node.names:
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        edges = set()
        for t in targets:
            if t not in MODULES or t == name:
                continue
            edges.add(t)
            parent = t.rpartition(".")[0]
            while parent and not (name == parent or name.startswith(parent + ".")):
                edges.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert graph["cifarlab.train.engine"] >= {"cifarlab.run", "cifarlab.train.loop"}, "the walk misses imports"
    assert "cifarlab.models" in graph["cifarlab.studies.runner"], "imports inside functions must count"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle_through_a_function_import():
    graph = import_graph()
    graph["cifarlab.models.registry"] = graph["cifarlab.models.registry"] | {"cifarlab.hub.saved"}
    assert find_cycle(graph) is not None


def test_models_know_nothing_of_training_the_run_folder_or_the_hub():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("cifarlab.models"):
            bad = {e for e in edges if e.startswith(("cifarlab.train", "cifarlab.hub", "cifarlab.run",
                                                     "cifarlab.studies", "cifarlab.report"))}
            assert not bad, f"{name} imports {bad}"


def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_run_folder_file_names_are_spelled_only_in_the_run_module():
    found = []
    for name, path in MODULES.items():
        if name.startswith("cifarlab.run"):
            continue
        for line, text in _string_literals(ast.parse(path.read_text())):
            found += [f"{path.relative_to(SRC)}:{line}: {f}" for f in RUN_FILE_NAMES
                      if re.search(rf"(?<![\w.]){re.escape(f)}", text)]
    # a saved model's own config.json (the Hub layout) is the saved-model folder's, not the run folder's
    found = [f for f in found if not f.startswith("cifarlab/hub/saved.py") or "config.json" not in f]
    assert not found, "\n".join(found)


def _imports_after(argv: list[str], cwd: Path) -> dict:
    code = ("import sys, json\nfrom cifarlab.cli import main\nrc = main(%r)\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'datasets': 'datasets' in sys.modules,"
            " 'accelerate': 'accelerate' in sys.modules}))") % argv
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(cwd),
                              "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """A study folder with finished runs, written by the engine."""
    from cifarlab.studies import load_study, run_study

    root = tmp_path_factory.mktemp("records")
    (root / "s.yaml").write_text("name: tiny\nseeds: 2\nbase: {model: resnet20, model_kwargs: {depth: 8}, "
                                 "data: 'synthetic:200:100', epochs: 1, batch_size: 50, report_to: none}\n"
                                 "variants: [{name: baseline}]\n")
    run_study(load_study(root / "s.yaml"), root / "runs", progress=False, log=lambda s: None)
    return root


@pytest.mark.parametrize("argv", [
    ["runs", "runs"],
    ["study", "plan", "s.yaml", "--out", "runs"],
    ["study", "table", "s.yaml", "--out", "runs"],
    ["study", "table", "runs/tiny"],
    ["report", "runs", "--out", "report"],
    ["reproduce", "--audit-only", "runs/tiny/baseline/seed0", "--out", "reproduction"],
], ids=lambda a: " ".join(a[:2]))
def test_commands_that_only_read_records_import_no_training_stack(records, argv):
    seen = _imports_after(argv, records)
    assert seen["rc"] == 0
    assert not (seen["torch"] or seen["datasets"] or seen["accelerate"]), seen


def test_engine_functions_take_at_most_five_parameters_apart_from_fit():
    tree = ast.parse((PACKAGE / "train" / "engine.py").read_text())
    wide = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "fit":
            a = node.args
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            n -= bool(a.args) and a.args[0].arg in ("self", "cls")
            if n > 5:
                wide.append(f"{node.name}: {n}")
    assert not wide, wide
