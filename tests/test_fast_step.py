"""The fast training step (cifarlab.train.fast): eager fallback on the CPU, CUDA graph where a GPU exists."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models import create
from cifarlab.train.fast import GraphedTrainStep, make_optimizer

BATCH = 8


def tiny_model(device="cpu"):
    torch.manual_seed(0)
    return create("resnet20", num_classes=10, depth=8).to(device, memory_format=torch.channels_last)


def batches(n, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(BATCH, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        out.append((x.to(device), torch.randint(0, 10, (BATCH,), generator=g).to(device)))
    return out


def weights(model):
    """Parameters and buffers (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fast_step(model, kind="sgd", lr=0.1, weight_decay=5e-4, device="cpu", **kw):
    opt = make_optimizer(model.parameters(), kind, lr, device, weight_decay=weight_decay)
    x, y = batches(1, device, seed=99)[0]
    return GraphedTrainStep(model, opt, F.cross_entropy, x, y, **kw)


def test_fallback_step_matches_plain_eager_step_exactly():
    ref_model = tiny_model()
    model = copy.deepcopy(ref_model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                              foreach=False)
    step = fast_step(model)
    assert not step.graphed
    ref_loss_sum = torch.zeros(())
    for x, y in batches(3):
        ref_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ref_model(x).float(), y)
        loss.backward()
        ref_opt.step()
        ref_loss_sum += loss.detach() * BATCH
        step.step(x, y)
    assert torch.equal(step.loss_sum, ref_loss_sum)
    ref_w, w = weights(ref_model), weights(model)
    assert ref_w.keys() == w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], w[k]), k


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_lr_tensor_is_updated_in_place_and_scales_the_step(kind):
    x, y = batches(1)[0]
    deltas = []
    for lr in (0.01, 0.02):
        model = tiny_model()
        start = weights(model)
        step = fast_step(model, kind, lr=0.5, weight_decay=0.0)
        lr_tensor = step.optimizer.param_groups[0]["lr"]
        step.step(x, y, lr=lr)
        assert step.optimizer.param_groups[0]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(lr)
        deltas.append(model.fc.weight.detach() - start["fc.weight"])
    assert deltas[0].abs().sum() > 0
    torch.testing.assert_close(deltas[1], 2 * deltas[0], rtol=1e-4, atol=1e-7)


def test_lr_may_be_a_device_tensor():
    step = fast_step(tiny_model())
    x, y = batches(1)[0]
    step.step(x, y, lr=torch.tensor(0.03))
    assert all(g["lr"].item() == pytest.approx(0.03) for g in step.optimizer.param_groups)


def test_nonfinite_flag_names_the_first_bad_step():
    step = fast_step(tiny_model())
    (x0, y0), (x1, y1), (x2, y2) = batches(3)
    step.step(x0, y0)
    assert step.first_nonfinite_step() is None and not bool(step.nonfinite)
    x1 = x1.clone()
    x1[0, 0, 0, 0] = float("nan")
    step.step(x1, y1)
    step.step(x2, y2)  # weights are NaN now; the flag keeps the first bad step
    assert step.first_nonfinite_step() == 1 and bool(step.nonfinite)


def test_accumulators_equal_the_manual_sums_and_reset():
    model = tiny_model()
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=False)
    step = fast_step(model)
    loss_sum, correct = 0.0, 0
    data = batches(4)
    for x, y in data:
        ref_opt.zero_grad(set_to_none=True)
        logits = ref(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        ref_opt.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        step.step(x, y)
    assert step.loss_sum.item() == pytest.approx(loss_sum, rel=1e-6)
    assert step.correct.item() == correct
    assert step.images == 4 * BATCH
    step.reset_metrics()
    assert step.loss_sum.item() == 0 and step.correct.item() == 0 and step.images == 0


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_undoing_the_warm_up_gives_the_state_of_a_fresh_start(kind):
    """What the CUDA capture does around its warm-up, checked on the CPU: after the restore, the next step
    equals the first step of an untouched model and optimizer."""
    model = tiny_model()
    fresh = copy.deepcopy(model)
    step, fresh_step = fast_step(model, kind), fast_step(fresh, kind)
    saved = step._snapshot()
    (xw, yw), (x, y) = batches(2)
    step.step(xw, yw)  # the "warm-up": moves weights and BN statistics, creates optimizer state
    step._restore(saved)
    assert all(torch.equal(v, weights(fresh)[k]) for k, v in weights(model).items())
    assert step.loss_sum.item() == 0 and step.first_nonfinite_step() is None
    step.step(x, y)
    fresh_step.step(x, y)
    for k, v in weights(fresh).items():
        assert torch.equal(weights(model)[k], v), k


def test_graph_path_refuses_a_float_lr():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="lr=torch.tensor"):
        GraphedTrainStep(model, opt, F.cross_entropy, x, y, graph=True)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="sgd or adamw"):
        make_optimizer(tiny_model().parameters(), "lamb")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_cuda_graph_matches_eager(kind, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    eager_model = tiny_model("cuda")
    graph_model = copy.deepcopy(eager_model)
    start = weights(graph_model)
    eager = fast_step(eager_model, kind, device="cuda", graph=False)
    graphed = fast_step(graph_model, kind, device="cuda", graph=True)
    assert graphed.graphed and not eager.graphed
    for k, v in weights(graph_model).items():  # the warm-up was undone
        assert torch.equal(v, start[k]), k
    data = batches(5, "cuda")
    for i, (x, y) in enumerate(data):
        lr = 0.05 * (i + 1)
        eager.step(x, y, lr)
        graphed.step(x, y, lr)
    for k, v in weights(eager_model).items():
        torch.testing.assert_close(weights(graph_model)[k], v, rtol=1e-4, atol=1e-5, msg=k)
    torch.testing.assert_close(graphed.loss_sum, eager.loss_sum, rtol=1e-5, atol=1e-5)
    assert graphed.correct.item() == eager.correct.item()
    x, y = data[0]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    graphed.step(bad, y)
    assert graphed.first_nonfinite_step() == 5
    with pytest.raises(ValueError, match="shape"):
        graphed.step(x[:4], y[:4])
