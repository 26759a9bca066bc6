"""The results page sorts records by budget (reference / reduced-budget reference / smoke), leads with a headline
generated from the records, rewrites the README's headline block, and never shows a machine's absolute path."""

import re
import statistics
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.io import write_json
from cifarlab.report import budget
from cifarlab.run import load_finished

FINGERPRINT = "f" * 64
TEST = 1000
PRIVATE = "/data/private-machine/cifar100"  # an absolute source as a user might pass it: kept in the record only
README = "# cifarlab\n\nIntro.\n\n<!-- results:start -->\nold headline\n<!-- results:end -->\n\n## Use\n"


def _run(folder: Path, *, seed: int, top1: float, epochs: int = 15, train: int = 50_000, subset: int = 0,
         device: str = "cpu (x86_64, 2 threads)", source: str = "../data/cifar100", seconds: float = 5400.0,
         finished: str = "2026-12-02T09:00:00Z") -> Path:
    """A compact run record (config.json, metrics.jsonl, result.json) in the format the trainer writes."""
    config = {"model": "resnet20", "dataset": "cifar100", "data": source, "epochs": epochs, "train_subset": subset,
              "batch_size": 128, "seed": seed}
    write_json(folder / "config.json", config)
    (folder / "metrics.jsonl").write_text("".join(
        f'{{"epoch": {e}, "train_loss": {4.6 - e * 0.1:.2f}, "test_top1": {top1 * e / epochs:.4f}}}\n'
        for e in range(1, epochs + 1)))
    write_json(folder / "result.json", {
        "model": "resnet20", "dataset": "cifar100", "source": source, "source_kind": "parquet",
        "dataset_fingerprint": FINGERPRINT, "split_sizes": {"train": subset or train, "test": TEST},
        "top1": top1, "top5": top1 + 0.3, "selection": "final epoch", "params": 275_572, "macs": 40_556_800,
        "epochs": epochs, "seed": seed, "train_seconds": seconds, "images_per_second": 45.0, "device": device,
        "world_size": 1, "finished_at": finished, "config": config,
        "test_correct": "1" * round(top1 * TEST) + "0" * (TEST - round(top1 * TEST))})
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """results/ with a 2-seed CPU reference at 15 epochs, a subset smoke run and a 15-epoch run not filed as a
    reference; the page, report and README written once by `cifarlab report ... --page ... --readme ...`."""
    root = tmp_path_factory.mktemp("page")
    results = root / "results"
    _run(results / "cpu-reference" / "resnet20-cifar100-seed0", seed=0, top1=0.4512, seconds=5400.0,
         finished="2026-12-02T08:40:00Z")
    _run(results / "cpu-reference" / "resnet20-cifar100-seed1", seed=1, top1=0.4488, seconds=5700.0,
         source=PRIVATE, finished="2026-12-02T08:52:00Z")
    _run(results / "smoke" / "resnet20-subset", seed=0, top1=0.05, epochs=2, subset=2000)
    _run(results / "loose" / "resnet20-15ep", seed=3, top1=0.44)
    (root / "README.md").write_text(README)
    argv = ["report", "results", "--out", "docs/results-report", "--page", "docs/results.md", "--readme", "README.md"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # as `make results` runs it
        assert main(argv) == 0
    return root, (root / "docs" / "results.md").read_text(), argv


def _headline(text: str) -> str:
    return text.split("## Headline\n", 1)[1].split("\n## ", 1)[0]


def test_the_page_leads_with_the_cpu_reference_generated_from_its_records(page):
    root, text, _ = page
    assert text.index("## Headline") < text.index("## How records are classified") < text.index("\n## CPU ref")
    lines = [line for line in _headline(text).splitlines() if line.startswith("- ")]
    assert len(lines) == 1, "one headline line: the two seeds of the reference, nothing else"
    line = lines[0]
    top1 = [0.4512, 0.4488]
    assert line.startswith("- **CPU reference** (real data, 2-thread CPU, 15 of the recipe's 200 epochs")
    assert f"**{100 * statistics.mean(top1):.2f} ± {100 * statistics.stdev(top1):.2f} %**" in line
    assert "2 seeds" in line and "`resnet20`" in line and "`cpu (x86_64, 2 threads)`" in line
    assert f"{statistics.mean([5400.0, 5700.0]) / 60:.1f} min" in line and "finished 2026-12-02" in line
    links = re.findall(r"\[([^]]+)\]\(([^)]+)\)", line)
    assert [name for name, _ in links] == ["resnet20-cifar100-seed0", "resnet20-cifar100-seed1"]
    for _, link in links:
        assert (root / "docs" / link).resolve() == (root / "results" / "cpu-reference" / link.split("/")[-2]
                                                    / "result.json")
    # the reduced-budget reference is never called a reference result; the other two runs are smoke runs
    assert "Reference results" not in text and "## CPU reference (reduced budget)" in text
    smoke = text.split("## Smoke runs", 1)[1]
    assert "resnet20-subset" in smoke and "resnet20-15ep" in smoke and "resnet20-cifar100-seed0" not in smoke
    assert "2,000 of 50,000 training images" in smoke and "15 of 200 epochs" in smoke
    assert "say nothing about the methods" in smoke
    smoke_report = (root / "docs" / "results-report" / "smoke" / "report.md").read_text()
    assert "**Smoke runs**" in smoke_report.split("## Setup")[0]
    assert "Smoke" not in (root / "docs" / "results-report" / "reduced-budget" / "report.md").read_text()


def test_no_absolute_path_reaches_a_generated_page(page):
    root, text, _ = page
    assert load_finished(root / "results" / "cpu-reference" / "resnet20-cifar100-seed1") \
        .record["source"] == PRIVATE, "the record keeps the source as the user gave it"
    generated = [root / "README.md", root / "docs" / "results.md",
                 *sorted((root / "docs" / "results-report").rglob("*.md"))]
    for path in generated:
        body = path.read_text()
        assert "/data/private-machine" not in body and str(root) not in body, path
    assert "a local parquet copy named `cifar100`" in text and f"`{FINGERPRINT}`" in text


def test_the_readme_block_holds_the_same_headline_and_nothing_else_changes(page):
    root, text, _ = page
    readme = (root / "README.md").read_text()
    before, rest = readme.split("<!-- results:start -->")
    block, after = rest.split("<!-- results:end -->")
    assert before + "<!-- results:start -->" == README.split("\n<!-- results:start -->")[0] + \
        "\n<!-- results:start -->" and after == "\n\n## Use\n"
    head = [line for line in block.splitlines() if line.startswith("- ")]
    page_head = [line for line in _headline(text).splitlines() if line.startswith("- ")]
    assert [re.sub(r"\]\([^)]+\)", "]", x) for x in head] == [re.sub(r"\]\([^)]+\)", "]", x) for x in page_head]
    for link in re.findall(r"\]\(([^)]+)\)", block):
        assert (root / link).is_file(), link
    assert "old headline" not in readme and readme.count("<!-- results:start -->") == 1, "the block is replaced"


def test_a_readme_without_the_markers_is_refused(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# no markers\n")
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "r"), "--page",
                 str(tmp_path / "results.md"), "--readme", str(tmp_path / "README.md")]) == 2
    assert "results:start" in capsys.readouterr().err


def test_budget_classes(tmp_path):
    results = tmp_path / "results"
    full = load_finished(_run(results / "gpu" / "a", seed=0, top1=0.68, epochs=200, device="NVIDIA H200"))
    gpu_short = load_finished(_run(results / "gpu-reference" / "b", seed=0, top1=0.6, epochs=30,
                                   device="NVIDIA H200"))
    outside = load_finished(_run(tmp_path / "elsewhere" / "reference" / "c", seed=0, top1=0.6))
    synthetic = load_finished(_run(results / "x-reference" / "d", seed=0, top1=0.01, epochs=200))
    synthetic.record["source_kind"] = "synthetic"
    assert budget.classify(full, results).kind == budget.REFERENCE
    assert budget.classify(gpu_short, results).kind == budget.REDUCED
    assert budget.kind_title(budget.REDUCED, [gpu_short]) == "Reference (reduced budget)"
    assert budget.classify(outside, results).kind == budget.SMOKE, "only folders below the results folder count"
    assert budget.classify(synthetic, results) == budget.Budget(budget.SMOKE, 200, 200, ("synthetic data",))
