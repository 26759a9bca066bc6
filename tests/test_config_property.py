"""Configs, command lines and study files: valid, or rejected with one line naming the field.

Property-based: hypothesis feeds random mappings (real field names, junk keys, typed and untyped values,
nested ``augment``, near-miss model names) and random ``cifarlab train`` argument lists. The only allowed
outcomes are a valid config or a ``CifarlabError`` (exit 2 on the command line) - never another exception. Each
strategy mixes in plausible input, and each property test checks that both outcomes were common among its
examples, so neither branch passes vacuously.
"""

import contextlib
import functools
import io
import math
import re
from collections import Counter

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import cifarlab.train
from cifarlab import CifarlabError, cli
from cifarlab.config import AugmentConfig, TrainConfig, build_config
from cifarlab.models import list_models
from cifarlab.studies.spec import parse_study
from cifarlab.train.optim import build_optimizer, build_scheduler

FIELDS = sorted(TrainConfig.model_fields)
AUG_FIELDS = sorted(AugmentConfig.model_fields)
MODELS = list_models()
LITERALS = ["sgd", "adamw", "cosine", "linear", "constant", "multistep", "step", "auto", "bf16", "fp32", "cifar10",
            "cifar100", "none", "trivialaugment", "autoaugment", "synthetic:300:100"]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# values: mostly plausible for some field (so that many configs are valid), some junk of every type
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 400), st.integers(), st.floats(-2, 3), st.floats(),
    st.sampled_from(LITERALS), st.text(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=5)
junk_keys = st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS)
model_names = st.one_of(
    st.sampled_from(MODELS),
    st.sampled_from(MODELS).flatmap(lambda n: st.integers(0, len(n) - 1).map(lambda i: n[:i] + n[i + 1:])),  # typo
    st.text(max_size=12), st.integers(), st.none(),
)


rarely = st.sampled_from([False, False, False, True])  # hypothesis favours the first element, not the last

# type-correct, mostly in-range values per field: these configs are often valid, so acceptance is exercised too
PLAUSIBLE = {
    "model": st.sampled_from(MODELS), "model_kwargs": st.just({}), "dataset": st.sampled_from(["cifar100", "cifar10"]),
    "data": st.sampled_from([None, "synthetic", "synthetic:300:100"]), "val_split": st.integers(0, 500),
    "epochs": st.integers(1, 300), "batch_size": st.integers(1, 1024), "eval_batch_size": st.integers(1, 1024),
    "optimizer": st.sampled_from(["sgd", "adamw"]), "lr": st.floats(1e-5, 2), "momentum": st.floats(0, 0.99),
    "weight_decay": st.floats(0, 0.1), "betas": st.tuples(st.floats(0, 0.99), st.floats(0, 0.999)),
    "schedule": st.sampled_from(["cosine", "linear", "constant", "multistep", "step"]),
    "warmup_epochs": st.none() | st.floats(0, 3), "gamma": st.floats(0.01, 1), "step_epochs": st.floats(0.5, 60),
    "milestones": st.lists(st.floats(0.01, 0.99), min_size=1, max_size=3, unique=True).map(sorted),
    "label_smoothing": st.floats(0, 0.5), "grad_clip": st.none() | st.floats(0.01, 10),
    "ema_decay": st.none() | st.floats(0.5, 0.9999), "seed": st.integers(0, 100), "eval_every": st.integers(1, 5),
    "precision": st.sampled_from(["auto", "fp32"]), "keep_checkpoints": st.integers(1, 4),
    "nan_check_every": st.integers(1, 100), **{f: st.booleans() for f in ("nesterov", "deterministic", "channels_last",
                                                                          "compile")},
    "augment": st.fixed_dictionaries({}, optional={
        "crop_padding": st.integers(0, 8), "hflip": st.booleans(), "vflip": st.booleans(), "cutout": st.integers(0, 16),
        "color_jitter": st.floats(0, 0.5), "policy": st.sampled_from(["none", "trivialaugment", "autoaugment"]),
        "mixup_alpha": st.floats(0, 1), "cutmix_alpha": st.floats(0, 1)}),
}


@st.composite
def plausible_overrides(draw, exclude=()):
    """A subset of fields with plausible values, one of them sometimes swapped for junk."""
    fields = draw(st.lists(st.sampled_from([f for f in FIELDS if f not in exclude]), unique=True, max_size=6))
    d = {f: draw(PLAUSIBLE.get(f, values)) for f in fields}
    if d and draw(rarely):
        d[draw(st.sampled_from(sorted(d)))] = draw(values)
    return d


@st.composite
def random_overrides(draw):
    d = draw(st.dictionaries(st.one_of(st.sampled_from(FIELDS), junk_keys, st.integers(-3, 3)), values, max_size=6))
    if draw(st.booleans()):
        d["model"] = draw(model_names)
    if draw(st.booleans()):
        d["augment"] = draw(st.one_of(
            st.dictionaries(st.one_of(st.sampled_from(AUG_FIELDS), junk_keys), values, max_size=4), values))
    if draw(st.booleans()):
        d["model_kwargs"] = draw(st.one_of(st.dictionaries(st.sampled_from(["depth", "widen", "dept"]), values,
                                                           max_size=2), values))
    return d


overrides = st.one_of(random_overrides(), plausible_overrides())


def named_fields(message: str) -> set[str]:
    """The fields a one-line config error names: ``config.FIELD...``, a model, or a bare field in a rule."""
    names = set(re.findall(r"config\.('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^.:\s;]+)", message))
    if message.startswith("unknown model"):
        names.add("model")
    names |= {f for f in FIELDS if re.search(rf"\b{f}\b", message)}
    return names


def assert_one_clear_line(message: str, given_keys) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    given_names = {str(k) for k in given_keys} | {repr(k) for k in given_keys}
    assert named_fields(message) & given_names, f"names none of the given fields: {message}"


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _floats(v)


TINY = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
OUTCOMES: Counter = Counter()  # "accepted" / "rejected", counted by the body of the property test running now
# Each property test sees both outcomes in >= 10 % of its 250 examples (measured: 26-52 % accepted, 48-74 % rejected)


def each_outcome_at_least(share: float):
    """Around a hypothesis test: after its run, both outcomes were seen in at least ``share`` of its examples, so
    neither branch of the property passes vacuously (a test that rejects every example would pass otherwise)."""
    def wrap(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            OUTCOMES.clear()
            test(*args, **kwargs)
            total = sum(OUTCOMES.values())
            for outcome in ("accepted", "rejected"):
                assert OUTCOMES[outcome] >= share * total, f"{outcome} in too few examples: {dict(OUTCOMES)}"
        return run
    return wrap


@each_outcome_at_least(0.1)
@given(overrides)
@SETTINGS
def test_build_config_gives_a_valid_config_or_one_clear_error(d):
    try:
        cfg = build_config(d)
    except CifarlabError as e:
        assert_one_clear_line(str(e), d)
        OUTCOMES["rejected"] += 1
        return
    OUTCOMES["accepted"] += 1
    assert isinstance(cfg, TrainConfig)
    assert TrainConfig.model_validate(cfg.model_dump()) == cfg
    assert all(math.isfinite(v) for v in _floats(cfg.model_dump())), "no inf/nan setting is accepted"
    assert cfg.warmup < cfg.epochs or cfg.warmup == 0
    build_scheduler(build_optimizer(TINY, cfg), cfg, steps_per_epoch=3)  # what it says can be run


# ---------------------------------------------------------------- the command line

FLAG_VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "3", "0.1", "1e-3", "inf", "nan", "abc", "", "[", "{a: 1}",
                                         "resnet20", "resnt20", "sgd", "adam", "bf16", "synthetic:300:100"]),
                        st.text(alphabet="ab01.-:[]{}=, ", max_size=6))
SET_KEYS = st.one_of(st.sampled_from(FIELDS + [f"augment.{a}" for a in AUG_FIELDS] + ["model_kwargs.depth", "lr.x",
                                                                                      "augment", "", ".", "a..b"]),
                     st.text(alphabet="abl.r_", max_size=6))


@st.composite
def train_argv(draw):
    argv = ["train"]
    for flag in draw(st.lists(st.sampled_from(list(cli.TRAIN_FLAGS)), max_size=4)):
        argv += [flag, draw(FLAG_VALUES)]
    for _ in range(draw(st.integers(0, 3))):
        argv += ["--set", f"{draw(SET_KEYS)}={draw(FLAG_VALUES)}"]
    if draw(st.booleans()):
        argv += ["--cutout", draw(FLAG_VALUES)]
    if draw(st.booleans()):
        argv += ["--set", draw(st.text(alphabet="ab=", max_size=3))]
    return argv


FLAG_PLAUSIBLE = {**PLAUSIBLE, "train_subset": st.integers(0, 100), "cuda_graph": st.sampled_from(["auto", "off"]),
                  "report_to": st.sampled_from(["none", "tensorboard"])}


@st.composite
def plausible_train_argv(draw):
    """A ``cifarlab train`` command line of plausible flag values (often valid), sometimes with one junk flag."""
    argv = ["train"]
    for flag in draw(st.lists(st.sampled_from(list(cli.TRAIN_FLAGS)), unique=True, max_size=4)):
        value = draw(FLAG_PLAUSIBLE[cli.TRAIN_FLAGS[flag][0]])
        if value is not None:
            argv += [flag, str(value)]
    if draw(rarely):
        argv += [draw(st.sampled_from(list(cli.TRAIN_FLAGS))), draw(FLAG_VALUES)]
    return argv


def run_cli(argv, tmp_dir):
    """cli.main with fit replaced by a recorder: (exit code, stderr, the config fit would have trained)."""
    seen = []

    def fake_fit(cfg, run_dir, **kw):
        seen.append(cfg)
        return {"top1": 0.0, "top5": 0.0}

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(cifarlab.train, "fit", fake_fit)
        try:
            code = cli.main([*argv, "--out", str(tmp_dir), "--no-progress"])
        except SystemExit as e:  # argparse: bad flag syntax
            code = e.code
    return code, err.getvalue(), seen


@each_outcome_at_least(0.1)
@given(st.one_of(train_argv(), plausible_train_argv()))
@SETTINGS
def test_train_command_line_trains_or_exits_2_with_one_line(tmp_path_factory, argv):
    code, err, seen = run_cli(argv, tmp_path_factory.getbasetemp() / "cli-runs")
    assert "Traceback" not in err
    OUTCOMES["accepted" if code == 0 else "rejected"] += 1
    if code == 0:
        assert len(seen) == 1 and isinstance(seen[0], TrainConfig)
    else:
        assert code == 2 and not seen
        lines = err.strip().splitlines()
        assert lines[-1].startswith(("error: ", "cifarlab train: error: ")), err
        if lines[-1].startswith("error: "):
            assert len(lines) == 1


@each_outcome_at_least(0.1)
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), junk_keys, st.integers(-2, 2)), values, max_size=5)
       | values | plausible_overrides())
@SETTINGS
def test_config_file_of_any_content_is_used_or_rejected_in_one_line(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "random-config.yaml"
    path.write_text(yaml.safe_dump(content) if not isinstance(content, str) else content)
    code, err, seen = run_cli(["train", "--config", str(path)], tmp_path_factory.getbasetemp() / "cli-runs")
    assert code in (0, 2) and "Traceback" not in err
    assert (code == 0) == bool(seen)
    OUTCOMES["accepted" if code == 0 else "rejected"] += 1
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


# ---------------------------------------------------------------- explicit cases


@pytest.mark.parametrize("over,field", [
    ({"epochs": 0}, "config.epochs"), ({"epochs": -3}, "config.epochs"), ({"lr": 0}, "config.lr"),
    ({"lr": -0.1}, "config.lr"), ({"lr": float("inf")}, "config.lr"), ({"lr": float("nan")}, "config.lr"),
    ({"batch_size": 0}, "config.batch_size"), ({"learning_rate": 0.1}, "config.learning_rate: unknown field"),
    ({"augment": {"cutout": 40}}, "config.augment.cutout"), ({"augment": {"cutot": 8}}, "config.augment.cutot"),
    ({"betas": [2.0, 0.9]}, "config.betas.0"), ({"epochs": "ten"}, "config.epochs"),
    ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs (5) must be shorter than epochs (5)"),
    ({1: 2}, "config.1: Keys should be strings"), ({"a\nb": 1}, "config.'a\\nb': unknown field"),
])
def test_bad_values_are_rejected_naming_the_field(over, field):
    with pytest.raises(CifarlabError) as e:
        build_config(over)
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,suggestion", [("resnet2", "resnet20"), ("eca_resnt20", "eca_resnet20"),
                                             ("ResNet20", "resnet20")])
def test_unknown_model_suggests_close_names(name, suggestion):
    with pytest.raises(CifarlabError, match=f"unknown model '{name}'; did you mean .*{suggestion}"):
        build_config({"model": name})
    with pytest.raises(CifarlabError, match="`cifarlab models` lists them"):
        build_config({"model": "qwertyuiop"})


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "error: config.epochs: Input should be greater than 0"),
    (["--lr", "-1"], "error: config.lr: Input should be greater than 0"),
    (["--model", "resnt20"], "error: unknown model 'resnt20'; did you mean resnet20"),
    (["--set", "lr=["], "error: --set lr: cannot read '[' as a YAML value"),
    (["--lr", "0.1", "--set", "lr.x=1"], "error: --set lr.x: lr is a value, not a group of fields"),
    (["--set", "=3"], "error: --set: '' is not a field name"),
    (["--set", "augment.cutot=8"], "error: config.augment.cutot: unknown field"),
])
def test_train_command_line_errors(tmp_path, argv, message):
    code, err, seen = run_cli(["train", *argv], tmp_path)
    assert code == 2 and not seen and err.strip().startswith(message) and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text,message", [
    ("lr: [0.1\n", "not a valid YAML file (line 2)"),
    ("1: 2\n", "config.1: Keys should be strings"),
    ("- lr\n", "expected a mapping of config fields"),
    ("lr: .inf\n", "config.lr"),
])
def test_config_file_errors(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, err, _ = run_cli(["train", "--config", str(path)], tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- study files


variant_specs = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b", "r20", "bad name", ""]), st.text(max_size=5))},
    optional={"model": model_names, "baseline": st.sampled_from(["a", "b", "zz"]), "junk": values,
              "overrides": st.one_of(plausible_overrides(exclude=("model", "seed", "epochs")), values)})
STUDY_PARTS = {
    "name": st.one_of(st.just("s"), st.text(max_size=5), values),
    "description": st.one_of(st.text(max_size=5), values),
    "base": st.one_of(plausible_overrides(exclude=("seed",)), values),
    "budget": st.one_of(st.fixed_dictionaries({"epochs": st.integers(-1, 3)}), values),
    "seeds": st.one_of(st.integers(-1, 3), st.lists(st.integers(-1, 3), max_size=3), values),
    "baseline": st.one_of(st.sampled_from(["a", "b", "zz"]), values),
    "variants": st.one_of(st.lists(variant_specs, max_size=3), values),
    "grid": st.one_of(st.fixed_dictionaries({"models": st.lists(model_names, max_size=2)}, optional={
        "overrides": st.dictionaries(st.text(max_size=3), plausible_overrides(exclude=("model", "seed", "epochs")),
                                     max_size=2)}), values),
}


@st.composite
def study_mappings(draw):
    """A plausible study (name, seeds, base, budget, variants), then up to two sections swapped, dropped or added."""
    d = {"name": "s", "seeds": draw(st.integers(1, 2)), "base": {"data": "synthetic:300:100"},
         "budget": {"epochs": draw(st.integers(1, 3))},
         "variants": [{"name": n, "model": draw(st.sampled_from(MODELS)),
                       "overrides": draw(plausible_overrides(exclude=("model", "seed", "epochs")))}
                      for n in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))]}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(STUDY_PARTS)))
        if draw(rarely):
            d.pop(key, None)
        else:
            d[key] = draw(STUDY_PARTS[key])
    if draw(rarely):
        d[draw(st.one_of(junk_keys, st.integers(0, 2)))] = draw(values)
    return d


@each_outcome_at_least(0.1)
@given(study_mappings())
@SETTINGS
def test_study_file_of_any_content_is_valid_or_one_clear_error(raw):
    try:
        study = parse_study(raw, "s.yaml")
    except CifarlabError as e:
        assert str(e) and "\n" not in str(e)
        OUTCOMES["rejected"] += 1
        return
    OUTCOMES["accepted"] += 1
    runs = study.runs()
    assert runs and all(isinstance(r.config, TrainConfig) for r in runs)
    assert len({r.run_id for r in runs}) == len(runs)


@pytest.mark.parametrize("args,message", [
    (["--set", "lr=["], "error: --set lr: cannot read '[' as a YAML value"),
    (["--set", "epochs=2", "--set", "epochs.x=1"], "error: --set epochs.x: epochs is a value, not a group of fields"),
    (["--set", "learning_rate=0.1"], "unknown config field 'learning_rate'"),
])
def test_study_command_line_errors(tmp_path, capsys, args, message):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "seeds": 1, "base": {"data": "synthetic:300:100"},
                                     "variants": [{"name": "a", "model": "resnet20"}]}))
    code = cli.main(["study", "plan", str(study), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
