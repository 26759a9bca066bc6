"""Every registered model: shape, backward, and a few optimisation steps of the engine's step that lower the loss."""

import pytest
import torch

from cifarlab.config import build_config
from cifarlab.model_catalog import _catalog, model_info
from cifarlab.models import count_macs, count_params, create, get_entry, list_models
from cifarlab.train import make_train_step

MODELS = list_models()
# Size tiers (the registry's `tier`): small 0.2-1.5 M, standard 2-30 M parameters. Documented exceptions: ResNet-110
# is the baseline family's deepest member (1.73 M); Ghost(-ECA)-ResNet-20 halve ResNet-20 (0.145 M) and sit beside it.
TIER_EXCEPTIONS = {"resnet110", "ghost_resnet20", "ghost_eca_resnet20"}


HOST_READS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_learning(name, monkeypatch):
    """... through the engine's TrainStep with the graph path's optimizer, which must not read a value back to the
    host: a host read is a device sync every step and makes the step impossible to capture as a CUDA graph."""
    torch.manual_seed(0)
    entry = get_entry(name)
    model = create(name, num_classes=100)
    params = count_params(model)
    lo, hi = (0.2e6, 1.5e6) if entry.tier == "small" else (2e6, 30e6)
    assert name in TIER_EXCEPTIONS or lo <= params <= hi, f"{name}: {params:,} params outside its {entry.tier} tier"
    assert entry.paper and entry.arch and entry.family
    info = model_info(name)  # the catalogue that record-only commands read instead of building models
    assert (info.family, info.tier, info.paper, info.recipe, info.params, info.macs) == (
        entry.family, entry.tier, entry.paper, entry.recipe, params, count_macs(model)), \
        f"{name}: src/cifarlab/model_catalog.json is out of date; run python scripts/make_model_docs.py"

    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) * 7 % 100
    model.eval()
    with torch.no_grad():  # timm's split, which Grad-CAM relies on
        out = model(x[:2])
        torch.testing.assert_close(model.forward_head(model.forward_features(x[:2])), out, rtol=0, atol=0)
        assert model.forward_head(model.forward_features(x[:2]), pre_logits=True).shape[0] == 2
    assert out.shape == (2, 100)
    adam = entry.recipe.get("optimizer") == "adamw"
    cfg = build_config({"model": name, "lr": 1e-3 if adam else 0.01, "weight_decay": 0.0, "nesterov": False,
                        "warmup_epochs": 0, "schedule": "constant", "label_smoothing": 0.0, "grad_clip": None})
    # the engine's builder with the graph path's fused optimizer and LR tensors, run eagerly
    step = make_train_step(model, cfg, "cpu", steps_per_epoch=6, capturable=True).step
    losses = []
    for _ in range(6):
        before = step.loss_sum.item()
        with monkeypatch.context() as m:
            for attr in HOST_READS:
                m.setattr(torch.Tensor, attr, _refuse)
            step.step(x, y)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        losses.append((step.loss_sum.item() - before) / len(y))
    assert step.first_nonfinite_step() is None
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"


def _refuse(*args, **kwargs):
    raise AssertionError("the training step read a value back to the host")


def test_every_family_has_both_tiers():
    fams: dict[str, set] = {}
    for n in MODELS:
        e = get_entry(n)
        fams.setdefault(e.family, set()).add(e.tier)
    missing = {f: t for f, t in fams.items() if t != {"small", "standard"} and f != "convnext_ablation"}
    assert not missing, f"families without both tiers: {missing}"


def test_family_names_resolve():
    from cifarlab.models import aliases

    for alias, target in aliases().items():
        assert get_entry(alias).name == target
    assert get_entry("vit").family == "vit"


def test_the_catalogue_lists_every_built_in_model_and_alias():
    from cifarlab.models import aliases

    models, catalog_aliases = _catalog()
    built_in = {n for n in list_models() if get_entry(n).constructor.__module__.startswith("cifarlab.models")}
    assert set(models) == built_in and catalog_aliases == aliases(), \
        "src/cifarlab/model_catalog.json is out of date; run python scripts/make_model_docs.py"
