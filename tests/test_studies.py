"""Studies: validation, expansion, sharding, resumable runs with recorded failures, the shipped study files;
and the batched augmentations the tricks study needs (data/policies.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import cifarlab.train
from cifarlab import CifarlabError
from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data import DeviceLoader, load_data
from cifarlab.data.augment import BatchAugment, crop_flip, pad_images
from cifarlab.data.policies import (
    OP_INDEX,
    OPS,
    AutoAugment,
    MixCut,
    RandAugment,
    TrivialAugment,
    apply_ops,
    color_jitter,
)
from cifarlab.models import get_entry, list_models
from cifarlab.models.convnext import modernization_steps
from cifarlab.studies import load_study, parse_study, run_state, run_study, shard_runs, study_summary
from cifarlab.studies.spec import shipped_studies
from cifarlab.train.optim import build_optimizer, build_scheduler

TINY_BASE = {"model_kwargs": {"depth": 8}, "data": "synthetic:300:100", "batch_size": 50, "lr": 0.1,
             "warmup_epochs": 0}


def _write(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


def _tiny_study(**extra) -> dict:
    return {"name": "tiny", "base": TINY_BASE, "budget": {"epochs": 2}, "seeds": 2, "baseline": "resnet8",
            "variants": [{"name": "resnet8", "model": "resnet20"},
                         {"name": "resnet8-tricks", "model": "resnet20",
                          "overrides": {"model_kwargs": {"act": "gelu"},
                                        "augment": {"policy": "trivialaugment", "mixup_alpha": 1.0,
                                                    "cutmix_alpha": 1.0}}}],
            **extra}


# ---- study files ----

def test_expansion_merges_base_budget_and_variant():
    study = parse_study(_tiny_study())
    runs = study.runs()
    assert [r.run_id for r in runs] == ["tiny/resnet8/seed0", "tiny/resnet8/seed1",
                                        "tiny/resnet8-tricks/seed0", "tiny/resnet8-tricks/seed1"]
    cfg = runs[3].config
    assert cfg.seed == 1 and cfg.epochs == 2 and cfg.model == "resnet20"
    assert cfg.model_kwargs == {"depth": 8, "act": "gelu"}, "model_kwargs deep-merge base and variant"
    assert cfg.augment.policy == "trivialaugment" and cfg.augment.hflip
    assert runs[0].run_dir("out") == Path("out/tiny/resnet8/seed0")
    grid = parse_study({"name": "g", "seeds": [3, 5], "baseline": "resnet20",
                        "grid": {"models": ["resnet20", "eca_resnet20"],
                                 "overrides": {"a": {"lr": 0.2}, "b": {"lr": 0.3}}},
                        "variants": [{"name": "resnet20", "model": "resnet20"}]})
    assert grid.names == ["resnet20", "resnet20-a", "resnet20-b", "eca_resnet20-a", "eca_resnet20-b"]
    assert grid.configs["eca_resnet20-b", 5].lr == 0.3 and len(grid.runs()) == 10
    # a selection keeps the baselines its variants are compared with
    assert parse_study(_tiny_study()).select(["*tricks"]).names == ["resnet8", "resnet8-tricks"]


@pytest.mark.parametrize("change, message", [
    (lambda s: s["base"].update(epochz=3), "unknown config field 'epochz'; did you mean epochs"),
    (lambda s: s["base"].update(schedule="cosin"),
     "'cosine', 'linear', 'constant', 'multistep', 'step' or 'exponential'"),
    (lambda s: s["base"].update(augment={"polcy": "x"}), "augment.polcy; did you mean policy"),
    (lambda s: s["variants"][0].update(model="resnet2O"), "unknown model 'resnet2O'; did you mean"),
    (lambda s: s.update(baseline="resnet9"), "baseline 'resnet9' is not a variant; did you mean resnet8"),
    (lambda s: s["variants"][1]["overrides"].update(epochs=5), "overrides the study budget (epochs)"),
    (lambda s: s["variants"][1].update(name="resnet8"), "repeated: resnet8"),
    (lambda s: s["variants"][0].update(overrides={"seed": 3}), "seeds come from"),
    (lambda s: s.update(seeds=[1, 1]), "distinct"),
    (lambda s: s.update(variantz=[]), "unknown field (allowed: name, description, base, budget, seeds"),
    (lambda s: s["variants"][0].update(overrides={"lr": -1}), "variant 'resnet8': config.lr: Input should be greater"),
])
def test_invalid_study_files_name_the_field(change, message):
    study = _tiny_study()
    study["base"] = dict(study["base"])
    change(study)
    with pytest.raises(CifarlabError) as err:
        parse_study(study, "bad.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shards_partition_the_runs(count):
    study = parse_study({"name": "p", "seeds": 3, "grid": {"models": ["resnet20", "eca_resnet20", "se_resnet20"]}})
    all_runs = study.runs()
    shards = [shard_runs(all_runs, i, count) for i in range(count)]
    ids = [r.run_id for s in shards for r in s]
    assert sorted(ids) == sorted(r.run_id for r in all_runs) and len(ids) == len(set(ids)) == 9
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # folders depend on the run id only, so shards' folders never collide and merge by copying
    dirs = [r.run_dir("out") for s in shards for r in s]
    assert len(set(dirs)) == 9
    assert shards == [shard_runs(study.runs(), i, count) for i in range(count)], "deterministic"


def test_shipped_studies_validate_and_expand():
    counts = {}
    for name, file in shipped_studies().items():
        study = load_study(name)
        runs = study.runs()
        assert study.name == name, f"{file.name}: a shipped study is named as its file, so `study run {name}` " \
                                   f"writes <out>/{name}"
        assert len({r.run_id for r in runs}) == len(runs) > 0
        assert all(v.baseline in study.names for v in study.variants), name
        counts[study.name] = len(runs)
    assert set(counts) == {"comparison", "eca", "ghost", "convnext", "ghost_eca", "tricks", "fast_vs_eager",
                           "time_to_accuracy"}
    paths = {r.variant: r.config.cuda_graph for r in load_study("fast_vs_eager").runs()}
    assert paths == {"eager": "off", "cuda_graph": "on"}, "YAML's bare on/off must reach the config as words"
    tta = load_study("time_to_accuracy").runs()
    assert {(r.config.model, r.config.epochs, r.config.batch_size) for r in tta} == {("resnet20", 200, 512),
                                                                                     ("resnet20", 150, 512)}
    comparison = load_study("comparison")
    methods = {m for m in list_models() if get_entry(m).family != "convnext_ablation"}
    assert {v.model for v in comparison.variants} == methods, "the comparison covers every registered method"
    assert {v.baseline for v in comparison.variants} == {"resnet56", "resnet18"}
    assert all(get_entry(v.model).tier == get_entry(v.baseline).tier for v in comparison.variants)
    assert load_study("convnext").names == modernization_steps()
    tricks = load_study("tricks")
    assert tricks.configs["lr-halve-every-5", 0].schedule == "step"
    assert {tricks.configs[f"aug-{a}", 0].augment.policy for a in ("trivialaugment", "autoaugment")} == \
        {"trivialaugment", "autoaugment"}
    # each shipped variant's model builds with its kwargs (checked on the small ones; the plan checks all)
    from cifarlab.models import create
    for name in ("eca_resnet20-after", "eca_resnet18-k7"):
        v = load_study("eca").variant(name)
        create(v.model, **v.overrides.get("model_kwargs", {}))
    for name in ("ghost_eca", "ghost", "tricks"):
        for v in load_study(name).variants:
            create(v.model, **v.overrides.get("model_kwargs", {}))


def test_studies_by_name_and_path(tmp_path, monkeypatch, capsys):
    """A shipped study is named on the command line (``study list`` names them); a file path works as before;
    a name that is neither is one line naming the shipped studies and the close ones."""
    monkeypatch.chdir(tmp_path)
    assert main(["study", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in shipped_studies())
    assert "15 x 3" in out and "none vs ECA vs SE" in out, "eca: variants x seeds and the first line of its question"
    assert main(["study", "plan", "eca", "--out", "runs", "--variants", "resnet20"]) == 0
    assert "study eca (shipped study eca): 1 variants x 3 seeds = 3 runs" in capsys.readouterr().out
    file = _write(tmp_path / "tiny.yaml", _tiny_study())
    assert main(["study", "plan", str(file), "--out", "runs"]) == 0
    assert f"study tiny ({file})" in capsys.readouterr().out
    assert main(["study", "table", "studies/eca.yaml", "--out", "runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: studies/eca.yaml is neither a study file nor a shipped study (comparison, ")
    assert "did you mean eca" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# ---- running ----

def test_study_runs_stops_half_way_resumes_and_tabulates(tmp_path, monkeypatch, capsys):
    file = _write(tmp_path / "tiny.yaml", _tiny_study())
    out = tmp_path / "runs"
    study = load_study(file)
    real_fit, calls = cifarlab.train.fit, []

    def fit_killed_in_third_run(cfg, run_dir, **kw):
        calls.append(run_dir)
        if len(calls) == 3:
            def kill(epoch, model, loader):
                raise KeyboardInterrupt
            kw["on_epoch_end"] = kill
        return real_fit(cfg, run_dir, **kw)

    monkeypatch.setattr(cifarlab.train, "fit", fit_killed_in_third_run)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, progress=False, log=lambda s: None)
    states = [run_state(r, out) for r in study.runs()]
    assert [s.status for s in states] == ["done", "done", "interrupted", "new"]
    assert states[2].last_epoch == 1
    monkeypatch.setattr(cifarlab.train, "fit", real_fit)

    capsys.readouterr()
    assert main(["study", "plan", str(file), "--out", str(out)]) == 0
    plan = capsys.readouterr().out
    assert "2 done, 1 interrupted, 1 new" in plan
    assert "2 runs from epoch times of finished runs of the same model" in plan
    assert "1/2" in plan, "the interrupted run has one epoch left"
    # what the design can detect: the seed SD of the baseline's 2 finished runs; 2 seeds cannot carry a claim
    assert "pooled over 2 runs of 1 variant)" in plan and "2 seeds per side: no gain can be claimed" in plan
    assert "a difference of 0.50 pt needs" in plan

    done = [s.run_dir / "result.json" for s in states[:2]]
    mtimes = [p.stat().st_mtime_ns for p in done]
    assert main(["study", "run", str(file), "--out", str(out), "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert log.count(" skip ") == 2 and "resume  tiny/resnet8-tricks/seed0 after epoch 1" in log
    assert "start   tiny/resnet8-tricks/seed1" in log and "2 finished, 2 skipped, 0 failed" in log
    assert [p.stat().st_mtime_ns for p in done] == mtimes, "finished runs are not touched"
    metrics = [json.loads(x)["epoch"] for x in (states[2].run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2]

    assert main(["study", "table", str(file), "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["variant"], r["n_seeds"]) for r in rows] == [("resnet8", 2), ("resnet8-tricks", 2)]
    assert rows[0]["verdict"] == "baseline" and rows[1]["verdict"].startswith("n < 3")
    assert rows[1]["ci_low"] <= rows[1]["delta_top1"] <= rows[1]["ci_high"]
    assert rows[1]["dataset"] == "cifar100" and rows[1]["params"] == rows[0]["params"]
    assert [r["n_seeds"] for r in study_summary(out / "tiny")] == [2, 2]  # the folder alone (its study.json)
    assert main(["study", "table", str(out / "tiny")]) == 0
    text = capsys.readouterr().out
    assert "resnet8-tricks" in text and "4 finished runs" in text and "vs resnet8" in text


def test_failing_variant_is_recorded_and_the_others_finish(tmp_path, capsys):
    study = {"name": "broken", "base": TINY_BASE, "budget": {"epochs": 1}, "seeds": 1, "baseline": "ok",
             "variants": [{"name": "bad", "model": "resnet20", "overrides": {"model_kwargs": {"no_such_kwarg": 1}}},
                          {"name": "ok", "model": "resnet20"}]}
    file = _write(tmp_path / "broken.yaml", study)
    out = tmp_path / "runs"
    assert main(["study", "plan", str(file), "--out", str(out)]) == 1
    plan = capsys.readouterr().out
    assert "cannot build the model" in plan and "no_such_kwarg" in plan, "the plan flags it before any training"
    assert main(["study", "run", str(file), "--out", str(out), "--no-progress"]) == 1
    log = capsys.readouterr().out
    assert "FAILED  broken/bad/seed0" in log and "finish  broken/ok/seed0" in log
    err = json.loads((out / "broken/bad/seed0/error.json").read_text())
    assert "no_such_kwarg" in err["error"] and err["run_id"] == "broken/bad/seed0" and "Traceback" in err["traceback"]
    assert (out / "broken/ok/seed0/result.json").is_file()
    main(["study", "plan", str(file), "--out", str(out)])
    assert "failed" in capsys.readouterr().out


def test_edited_study_never_overwrites_a_finished_run(tmp_path):
    out = tmp_path / "runs"
    run = parse_study({**_tiny_study(), "seeds": 1}).runs()[0]
    run.run_dir(out).mkdir(parents=True)
    (run.run_dir(out) / "config.json").write_text(json.dumps({**run.config.model_dump(mode="json"), "lr": 0.5}))
    (run.run_dir(out) / "result.json").write_text("{}")
    st = run_state(run, out)
    assert st.status == "changed" and "lr" in st.detail


# ---- the step schedule (halve every N epochs) ----

def test_step_schedule_halves_every_n_epochs():
    cfg = build_config({"schedule": "step", "step_epochs": 5, "gamma": 0.5, "epochs": 20, "warmup_epochs": 0,
                        "lr": 0.4})
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(20 * 3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.4) and lrs[14] == pytest.approx(0.4)
    assert lrs[15] == pytest.approx(0.2) and lrs[30] == pytest.approx(0.1) and lrs[59] == pytest.approx(0.05)


# ---- batched augmentations ----

def _images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear")
    return (smooth * 200 + torch.rand(n, 3, 32, 32, generator=g) * 55).to(torch.uint8)


MAGNITUDES = {"shear_x": 0.37, "shear_y": -0.5, "translate_x": -7.6, "translate_y": 12.2, "rotate": 33.0,
              "brightness": 0.4, "color": -0.6, "contrast": 0.5, "sharpness": 0.9, "posterize": 3.0,
              "solarize": 128.0, "autocontrast": 0.0, "equalize": 0.0, "invert": 0.0}


@pytest.mark.parametrize("name", list(MAGNITUDES))
def test_each_op_changes_images_keeps_uint8_values_and_matches_torchvision(name):
    from torchvision.transforms import InterpolationMode, autoaugment as tv

    x8 = _images()
    n, m = len(x8), MAGNITUDES[name]
    out = apply_ops(x8.float(), torch.full((n,), OP_INDEX[name]), torch.full((n,), m))
    assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())
    assert (out != x8.float()).float().mean() > 0.3, f"{name} must change the images"
    tv_name = "".join(p.capitalize() for p in name.split("_"))
    tv_name = {"Autocontrast": "AutoContrast"}.get(tv_name, tv_name)
    ref = torch.stack([tv._apply_op(x8[i], tv_name, m, InterpolationMode.NEAREST, None) for i in range(n)]).float()
    diff = (out - ref).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.999


def test_identity_op_leaves_images_alone():
    x = _images().float()
    assert torch.equal(apply_ops(x, torch.full((len(x),), OP_INDEX["identity"]), torch.zeros(len(x))), x)


@pytest.mark.parametrize("policy", [TrivialAugment(), AutoAugment(), RandAugment(),
                                    lambda x, g: color_jitter(x, 0.2, g)])
def test_policies_are_seeded_change_images_and_keep_the_range(policy):
    x = _images(64).float()
    a = policy(x, torch.Generator().manual_seed(1))
    b = policy(x, torch.Generator().manual_seed(1))
    c = policy(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 255 and torch.equal(a, a.floor())
    changed = (a != x).flatten(1).any(1).float().mean()
    assert changed > 0.5


def test_trivialaugment_draws_every_op():
    ta = TrivialAugment()
    assert len(ta.ops) == 14 and "invert" not in ta.ops and len(OPS) == 15
    assert ta.table[OP_INDEX["posterize"]].tolist()[::10] == [8.0, 6.0, 4.0, 2.0]


def test_randaugment_uses_torchvisions_ops_and_magnitudes():
    from torchvision import transforms as tv

    ra = RandAugment(num_ops=2, magnitude=9)
    space = tv.RandAugment()._augmentation_space(31, (32, 32))
    names = {"".join(p.capitalize() for p in n.split("_")).replace("Autocontrast", "AutoContrast"): n for n in ra.ops}
    assert set(names) == set(space), "the same 14 ops"
    for tv_name, (mags, signed) in space.items():
        expected = float(mags[9]) if mags.ndim else 0.0
        assert ra.mag[OP_INDEX[names[tv_name]]].item() == pytest.approx(expected), tv_name
        assert bool(ra.signed[OP_INDEX[names[tv_name]]]) == signed or mags.ndim == 0, tv_name


def test_randaugment_applies_num_ops_drawn_ops_at_the_fixed_magnitude():
    x = _images(256).float()
    ra = RandAugment(num_ops=2, magnitude=14)
    out = ra(x, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # replay the same draws by hand
    ref = x
    drawn = []
    for _ in range(2):
        op = ra.op_ids[torch.randint(0, 14, (256,), generator=g)]
        sign = torch.where(torch.rand(256, generator=g) < 0.5, -1.0, 1.0)
        ref = apply_ops(ref, op, ra.mag[op] * torch.where(ra.signed[op], sign, 1.0))
        drawn.append(op)
    assert torch.equal(out, ref)
    assert len(set(torch.cat(drawn).tolist())) == 14, "every op is drawn"
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)


def test_vertical_flip_flips_rows():
    x = torch.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3).remainder(251).to(torch.uint8)
    out = crop_flip(pad_images(x, 0).repeat(20, 1, 1, 1), 0, False, torch.Generator().manual_seed(0), vflip=True)
    flipped = [torch.equal(out[i], x[i % 2].flip(0)) for i in range(40)]
    same = [torch.equal(out[i], x[i % 2]) for i in range(40)]
    assert all(f or s for f, s in zip(flipped, same, strict=True)) and 5 < sum(flipped) < 35


def test_mixup_and_cutmix_give_soft_targets():
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8)
    mc = MixCut(1.0, 1.0, num_classes=10)
    plan = mc.epoch_plan(7, 200)
    assert plan == mc.epoch_plan(7, 200) and 50 < sum(c for c, _ in plan) < 150
    xm, t = mc(x, y, (False, 0.3), None)
    torch.testing.assert_close(xm, 0.3 * x + 0.7 * x.flip(0))
    assert torch.allclose(t.sum(1), torch.ones(8)) and t[0, 0] == pytest.approx(0.3) and t[0, 7] == pytest.approx(0.7)
    xc, tc = mc(x, y, (True, 0.5), torch.Generator().manual_seed(0))
    pasted = (xc != x).any(1)[0].float().mean()  # fraction of pixels taken from the partner image
    assert 0 < pasted < 1 and tc[0, 7] == pytest.approx(pasted.item(), abs=1e-6)
    assert torch.allclose(tc.sum(1), torch.ones(8))


def test_loader_with_all_augmentations_yields_normalised_batches_and_soft_targets():
    d = load_data("cifar100", "synthetic:200:50")
    aug = BatchAugment(d.mean, d.std, 4, True, 8, vflip=True, color_jitter=0.2, policy="autoaugment",
                       mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=100)
    ld = DeviceLoader(d.train, 50, d.mean, d.std, train=True, augment=aug, seed=3)
    ld.set_epoch(1)
    x, t = next(iter(ld))
    x2, t2 = next(iter(ld))
    assert torch.equal(x, x2) and torch.equal(t, t2), "a function of (seed, epoch)"
    assert x.shape == (50, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert t.shape == (50, 100) and torch.allclose(t.sum(1), torch.ones(50))
    assert x.abs().max() < 4 and np.isfinite(x.numpy()).all()
