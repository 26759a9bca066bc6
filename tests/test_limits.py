"""Bounds before the work: a study is counted before it is expanded, and model_kwargs are checked and sized on
the meta device before the real build; every refusal is one line, exit status 2, and no run folder."""

import pytest
import torch
import yaml

from cifarlab import CifarlabError
from cifarlab.cli import main
from cifarlab.models import build_model, count_params, create, get_entry, list_models
from cifarlab.studies import parse_study

TRAIN = ["train", "--data", "synthetic:200:100", "--epochs", "1", "--batch-size", "50", "--no-progress",
         "--report-to", "none"]


def _refused(capsys, argv: list[str], fragment: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err
    return err


# ---- model options ----

@pytest.mark.parametrize("model, kwargs, fragment", [
    ("resnet20", "{num_classes: 5}", "num_classes is set by the dataset"),
    ("resnet20", "{pretrained: true}", "does not take 'pretrained'"),
    ("resnet20", "{depth: x}", "rejects model_kwargs {'depth': 'x'}"),
    ("resnet20", "{depth: [1, 2]}", "rejects model_kwargs {'depth': [1, 2]}"),
    ("res2net56", "{widthz: [16, 32, 64]}", "does not take 'widthz' (model_kwargs it takes: depth, scale, widths"),
    ("res2net56", "{widths: [10000000, 16, 16]}", "more than the limit of 1,000,000,000; set CIFARLAB_MAX_PARAMS"),
])
def test_model_options_refused_before_a_run_folder(tmp_path, capsys, model, kwargs, fragment):
    out = tmp_path / "runs"
    _refused(capsys, [*TRAIN, "--model", model, "--set", f"model_kwargs={kwargs}", "--out", str(out)], fragment)
    assert not out.exists()


def test_runaway_depth_stops_at_the_module_limit(tmp_path, capsys, monkeypatch):
    """Ten million blocks would take hours to build even on the meta device: the count stops it at the limit."""
    with pytest.raises(CifarlabError, match=r"has at least 20,001 modules, more than the limit of 20,000; "
                                            r"set CIFARLAB_MAX_MODULES"):
        build_model("resnet20", 100, {"depth": 6 * 10_000_000 + 2})
    monkeypatch.setenv("CIFARLAB_MAX_MODULES", "300")  # the knob: ResNet-110 (about 380 modules) is now too deep
    out = tmp_path / "runs"
    _refused(capsys, [*TRAIN, "--set", "model_kwargs={depth: 110}", "--out", str(out)],
             "has at least 301 modules, more than the limit of 300")
    assert not out.exists()
    monkeypatch.setenv("CIFARLAB_MAX_MODULES", "lots")
    with pytest.raises(CifarlabError, match="CIFARLAB_MAX_MODULES must be a positive whole number, got 'lots'"):
        build_model("resnet20", 100, {"depth": 8})


def test_parameter_limit_is_a_knob(monkeypatch):
    params = count_params(create("resnet20", depth=8))
    monkeypatch.setenv("CIFARLAB_MAX_PARAMS", str(params))  # parameters and buffers: BatchNorm statistics tip it
    with pytest.raises(CifarlabError, match=f"more than the limit of {params:,}; set CIFARLAB_MAX_PARAMS"):
        build_model("resnet20", 100, {"depth": 8})
    monkeypatch.setenv("CIFARLAB_MAX_PARAMS", "2_000_000")
    assert count_params(build_model("resnet20", 100, {"depth": 8})) == params


def test_every_registered_model_fits_the_default_limits():
    """The meta build of each model with an option it takes, within the default limits; ResNet-1202 (the deepest
    CIFAR ResNet) too. The meta build leaves the real one unchanged."""
    for name in list_models():
        with torch.device("meta"):
            model = get_entry(name).build(num_classes=100)
        assert sum(1 for _ in model.modules()) < 20_000 and count_params(model) < 1_000_000_000, name
    deep = build_model("resnet20", 100, {"depth": 1202})
    assert next(deep.parameters()).device.type == "cpu" and count_params(deep) == 19_427_124
    torch.manual_seed(0)
    a = build_model("eca_resnet20", 10, {"attention_position": "after"})
    torch.manual_seed(0)
    b = get_entry("eca_resnet20").build(num_classes=10, attention_position="after")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)), \
        "the meta build draws no random numbers: the real build is the one a seed gives"


# ---- studies ----

def _grid_study(models: int, sets: int, seeds: int) -> dict:
    return {"name": "big", "seeds": seeds,
            "grid": {"models": ["resnet20"] * models, "overrides": {f"s{i}": {"lr": 0.1} for i in range(sets)}}}


def test_study_runs_are_counted_before_expansion(tmp_path, capsys, monkeypatch):
    """300 models x 300 override sets x 1000 seeds: 90 million runs from a file of a few kilobytes, refused from
    the declared counts (repeated model names included: the count comes before any name check)."""
    with pytest.raises(CifarlabError, match=r"90,000 variants x 1000 seeds = 90,000,000 runs, more than the limit "
                                            r"of 10,000 runs per study; raise it with --max-runs 90000000"):
        parse_study(_grid_study(300, 300, 1000), "big.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_grid_study(2, 2, 3)))
    _refused(capsys, ["study", "plan", "s.yaml", "--max-runs", "11"], "4 variants x 3 seeds = 12 runs")
    _refused(capsys, ["study", "run", "s.yaml", "--max-runs", "11"], "raise it with --max-runs 12")
    assert not (tmp_path / "runs").exists()


def test_study_configs_and_names_are_bounded():
    study = {"name": "s", "seeds": 1, "variants": [{"name": "a", "model": "resnet20"}],
             "base": {"model_kwargs": {f"k{i}": i for i in range(600)}}}
    with pytest.raises(CifarlabError, match="a run's config .* holds more than 1,000 values"):
        parse_study(study)
    with pytest.raises(CifarlabError, match="String should have at most 128 characters"):
        parse_study({"name": "s", "seeds": 1, "variants": [{"name": "v" * 129, "model": "resnet20"}]})
    with pytest.raises(CifarlabError, match="String should have at most 128 characters"):
        parse_study({"name": "s", "seeds": 1, "grid": {"models": ["resnet20"], "overrides": {"x" * 120: {}}}})


def test_many_variants_are_checked_in_one_pass():
    """10,000 variants (the default limit) with a repeated name, and a selection through a 2,000-long chain of
    baselines: the checks that once compared every pair give the same answers."""
    variants = [{"name": f"v{i}", "model": "resnet20"} for i in range(9_999)] + [{"name": "v7", "model": "resnet20"}]
    with pytest.raises(CifarlabError, match=r"variant names must be unique; repeated: v7$"):
        parse_study({"name": "s", "seeds": 1, "variants": variants})
    chain = [{"name": "v0", "model": "resnet20"}] + [
        {"name": f"v{i}", "model": "resnet20", "baseline": f"v{i - 1}"} for i in range(1, 2_000)]
    study = parse_study({"name": "s", "seeds": 1, "variants": chain + [{"name": "other", "model": "resnet20"}]})
    assert study.select(["v1999"]).names == [f"v{i}" for i in range(2_000)]
