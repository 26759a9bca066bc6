"""The engine's training step (cifarlab.train.step): eager on the CPU, CUDA graph where a GPU exists."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cifarlab.config import build_config
from cifarlab.models import create
from cifarlab.train import make_train_step, train_epoch
from cifarlab.train.ema import WeightEma
from cifarlab.train.optim import build_optimizer, build_scheduler, load_optimizer_state, param_groups
from cifarlab.train.step import TrainStep, lr_on_device

BATCH = 8
CUDA = torch.cuda.is_available()


def tiny_model(device="cpu"):
    torch.manual_seed(0)
    return create("resnet20", num_classes=10, depth=8).to(device, memory_format=torch.channels_last)


def batches(n, device="cpu", seed=1, soft=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(BATCH, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (BATCH,), generator=g)
        if soft:
            y = 0.7 * F.one_hot(y, 10).float() + 0.3 * F.one_hot(y.flip(0), 10).float()
        out.append((x.to(device), y.to(device)))
    return out


def weights(model):
    """Parameters and buffers (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def cfg(**over):
    return build_config({"model": "resnet20", "lr": 0.1, "weight_decay": 5e-4, "epochs": 2, **over})


def make_training(model, device="cpu", graph=False, capturable=None, **over):
    """The engine's builder, as ``fit`` calls it."""
    sample = batches(1, device, seed=99)[0] if graph else None
    return make_train_step(model, cfg(**over), device, steps_per_epoch=5, graph=graph, sample=sample,
                           capturable=capturable)


def make_step(model, device="cpu", graph=False, **over):
    training = make_training(model, device, graph, **over)
    return training.step, training.scheduler


def reference_steps(model, data, label_smoothing=0.0, grad_clip=None, ema_decay=None):
    """The plain eager loop the engine used to run inline: what the step must reproduce bit for bit."""
    c = cfg(label_smoothing=label_smoothing, grad_clip=grad_clip)
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c, steps_per_epoch=5)
    ema = copy.deepcopy(model) if ema_decay else None
    loss_sum, correct = torch.zeros(()), 0
    for x, y in data:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    e.copy_(ema_decay * e + (1 - ema_decay) * m if e.is_floating_point() else m)
        loss_sum += loss.detach() * len(y)
        correct += int((logits.argmax(1) == (y if y.ndim == 1 else y.argmax(1))).sum())
    return loss_sum, correct, ema


@pytest.mark.parametrize("over", [{}, {"label_smoothing": 0.1, "grad_clip": 0.5}, {"ema_decay": 0.9}])
@pytest.mark.parametrize("soft", [False, True])
def test_eager_step_reproduces_the_plain_loop_exactly(over, soft):
    data = batches(4, soft=soft)
    ref_model = tiny_model()
    model = copy.deepcopy(ref_model)
    ref_loss, ref_correct, ref_ema = reference_steps(ref_model, data, **over)
    training = make_training(model, **over)
    step = training.step
    assert not step.graphed
    stats = train_epoch(training, data, first_step=0, nan_check_every=3)
    assert torch.equal(step.loss_sum, ref_loss) and step.correct.item() == ref_correct
    assert (stats.images, stats.loss, stats.top1) == (4 * BATCH, ref_loss.item() / (4 * BATCH),
                                                      ref_correct / (4 * BATCH))
    for k, v in weights(ref_model).items():
        assert torch.equal(weights(model)[k], v), k
    if ref_ema is not None:
        for k, v in weights(ref_ema).items():
            torch.testing.assert_close(weights(step.ema.module)[k], v, rtol=1e-6, atol=1e-7, msg=k)


def test_the_step_never_reads_a_value_back_to_the_host(monkeypatch):
    """No .item(), bool() or tolist() on a tensor inside the step: each would be a device sync on CUDA."""
    step, _ = make_step(tiny_model(), grad_clip=1.0, ema_decay=0.99, label_smoothing=0.1)
    data = batches(2)

    def refuse(*a, **k):
        raise AssertionError("host read inside the training step")

    for name in ("item", "__bool__", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for x, y in data:
        step.step(x, y)
    monkeypatch.undo()
    assert step.first_nonfinite_step() is None and step.correct.item() >= 0


def test_nonfinite_flag_names_the_first_bad_global_step():
    step, _ = make_step(tiny_model())
    step.start_at(40)  # a resumed run: the epoch's first step is global step 40
    (x0, y0), (x1, y1), (x2, y2) = batches(3)
    step.step(x0, y0)
    assert step.first_nonfinite_step() is None
    x1 = x1.clone()
    x1[0, 0, 0, 0] = float("nan")
    step.step(x1, y1)
    step.step(x2, y2)  # the weights are NaN now; the flag keeps the first bad step
    assert step.first_nonfinite_step() == 41


def test_a_nonfinite_gradient_with_a_finite_loss_is_caught():
    model = tiny_model()
    step, _ = make_step(model)
    model.fc.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    x, y = batches(1)[0]
    step.step(x, y)
    assert torch.isfinite(step.loss_sum) and step.first_nonfinite_step() == 0


def test_accumulators_reset_in_place():
    step, _ = make_step(tiny_model())
    loss_t, correct_t = step.loss_sum, step.correct
    for x, y in batches(2):
        step.step(x, y)
    assert loss_t.item() > 0
    step.reset_metrics()
    assert step.loss_sum is loss_t and step.correct is correct_t and loss_t.item() == 0 and correct_t.item() == 0


def test_a_tensor_lr_follows_the_scheduler_in_place():
    """The graph path's LR: one tensor per group, written in place every step, whatever the scheduler does."""
    model = tiny_model()
    training = make_training(model, capturable=True, warmup_epochs=1)
    step, opt, sched = training.step, training.optimizer, training.scheduler
    lrs = [g["lr"] for g in opt.param_groups]
    seen = []
    for x, y in batches(4):
        step.step(x, y)
        seen.append(float(lrs[0]))
        sched.step()
        opt.param_groups[1]["lr"] = float(opt.param_groups[1]["lr"])  # as a float-assigning scheduler would
    step.step(*batches(1)[0])
    assert all(g["lr"] is t for g, t in zip(opt.param_groups, lrs, strict=True))
    assert seen == pytest.approx([0.1 * i / 5 for i in range(4)])  # linear warm-up from 0 over 5 steps
    assert float(lrs[1]) == pytest.approx(float(lrs[0]))


def test_lr_on_device_round_trips_to_floats():
    model = tiny_model()
    opt = build_optimizer(model, cfg())
    lr_on_device(opt, "cpu")
    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].ndim == 0 for g in opt.param_groups)
    lr_on_device(opt, None)
    assert all(g["lr"] == pytest.approx(0.1) and isinstance(g["lr"], float) for g in opt.param_groups)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_undoing_the_warm_up_gives_the_state_of_a_fresh_start(optimizer):
    """What the CUDA capture does around its warm-up, checked on the CPU: after the restore, the next step
    equals the first step of an untouched model, optimizer and EMA."""
    model = tiny_model()
    fresh = copy.deepcopy(model)
    step, _ = make_step(model, optimizer=optimizer, ema_decay=0.9)
    fresh_step, _ = make_step(fresh, optimizer=optimizer, ema_decay=0.9)
    saved = step._snapshot()
    (xw, yw), (x, y) = batches(2)
    step.step(xw, yw)  # the "warm-up": moves weights, BN statistics and the EMA, creates optimizer state
    step._restore(saved)
    assert all(torch.equal(v, weights(fresh)[k]) for k, v in weights(model).items())
    assert step.loss_sum.item() == 0 and step.first_nonfinite_step() is None
    step.step(x, y)
    fresh_step.step(x, y)
    for k, v in weights(fresh).items():
        assert torch.equal(weights(model)[k], v), k
    for k, v in weights(fresh_step.ema.module).items():
        assert torch.equal(weights(step.ema.module)[k], v), k


def test_graph_step_needs_a_tensor_lr_and_cuda():
    device = "cuda" if CUDA else "cpu"
    model = tiny_model(device)
    with pytest.raises(ValueError, match="lr_on_device"):
        TrainStep(model, build_optimizer(model, cfg(), capturable=True), graph=True, sample=batches(1, device)[0])
    if not CUDA:
        opt = build_optimizer(model, cfg(), capturable=True)
        lr_on_device(opt, "cpu")
        with pytest.raises(ValueError, match="CUDA device"):
            TrainStep(model, opt, graph=True, sample=batches(1)[0])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resuming_keeps_the_kernels_of_the_new_path(optimizer):
    """A checkpoint of an eager (foreach) run loaded for a graph run must stay fused, and the other way round."""
    model = tiny_model()
    saver = build_optimizer(model, cfg(optimizer=optimizer))
    TrainStep(model, saver).step(*batches(1)[0])
    saved = copy.deepcopy(saver.state_dict())
    assert saved["param_groups"][0]["foreach"] is True
    fused = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    loader = fused(param_groups(model, 5e-4), lr=0.1, fused=True)
    load_optimizer_state(loader, saved)
    assert loader.param_groups[0]["fused"] is True and not loader.param_groups[0]["foreach"]
    assert len(loader.state) == len(saver.state)
    for p in model.parameters():
        for k, v in saver.state[p].items():
            assert torch.equal(loader.state[p][k].cpu(), v.cpu()), k
    loader.step()  # and it still runs


def test_ema_starts_as_a_copy_and_moves_by_the_decay():
    model = tiny_model()
    ema = WeightEma(model, 0.75)
    assert all(torch.equal(v, weights(model)[k]) for k, v in weights(ema.module).items())
    before = weights(ema.module)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
        model.stem.bn.num_batches_tracked.add_(3)
    ema.update()
    torch.testing.assert_close(ema.module.fc.weight, before["fc.weight"] + 0.25)
    assert ema.module.stem.bn.num_batches_tracked.item() == model.stem.bn.num_batches_tracked.item()
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightEma(model, 1.0)


# ---------------------------------------------------------------- CUDA only: the graph itself

@pytest.mark.cuda
@pytest.mark.parametrize("over", [{}, {"optimizer": "adamw", "lr": 1e-3}, {"grad_clip": 0.5, "ema_decay": 0.9,
                                                                          "label_smoothing": 0.1}])
def test_cuda_graph_step_matches_the_same_step_run_eagerly(over, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    eager_model = tiny_model("cuda")
    graph_model = copy.deepcopy(eager_model)
    start = weights(graph_model)
    graphed, g_sched = make_step(graph_model, "cuda", graph=True, **over)
    # the same fused optimizer and tensor LR, run eagerly: only the graph differs
    eager_training = make_training(eager_model, "cuda", capturable=True, **over)
    eager, e_sched = eager_training.step, eager_training.scheduler
    assert graphed.graphed and not eager.graphed and graphed.capture_error is None
    for k, v in weights(graph_model).items():  # the warm-up was undone
        assert torch.equal(v, start[k]), k
    data = batches(5, "cuda")
    for x, y in data:
        eager.step(x, y)
        graphed.step(x, y)
        e_sched.step()
        g_sched.step()
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


@pytest.mark.cuda
def test_a_step_that_cannot_be_captured_falls_back_to_eager():
    class HostBranch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            out = self.lin(x.flatten(1))
            return out * 2 if out.sum() > 0 else out  # a host read: not capturable

    model = HostBranch().cuda()
    step, _ = make_step(model, "cuda", graph=True)
    assert not step.graphed and step.capture_error
    step.step(*batches(1, "cuda")[0])
    assert step.first_nonfinite_step() is None
