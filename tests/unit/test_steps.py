"""Loss normalisation, accumulation equivalence, NaN guard, throughput, schedules, optimizers."""

import math

import pytest
import torch

from tuneforge.errors import TrainingDiverged
from tuneforge.train.optim import build_optimizer, lr_factor, parameter_groups
from tuneforge.tasks.losses import forward_loss_sum
from tuneforge.train.steps import Throughput, accumulation_windows, check_finite, step_loss_scale


class Head(torch.nn.Module):
    """A linear classifier with a transformers-like output, so the tests run the loss the loop runs."""

    def __init__(self, n_in: int, n_out: int, dtype=torch.float32):
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_out, dtype=dtype)

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.linear(input_ids))


def classification_loss_sum(model, xs, ys):
    """The loop's loss for label kind "class" (``tasks.losses.forward_loss_sum``): summed, fp32."""
    loss, _ = forward_loss_sum(model, {"input_ids": xs, "labels": ys}, "class")
    return loss


def grads_for(model, xs, ys, windows):
    """Gradient after one optimizer step made of ``windows`` micro-batches (the loop's arithmetic)."""
    model.zero_grad()
    total = sum(len(w) for w in windows)
    scale = step_loss_scale(total, world_size=1)
    for idx in windows:
        (classification_loss_sum(model, xs[idx], ys[idx]) * scale).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_equals_one_big_batch_even_with_uneven_micro_batches():
    torch.manual_seed(0)
    model = Head(5, 3)
    xs, ys = torch.randn(11, 5), torch.randint(0, 3, (11,))
    full = grads_for(model, xs, ys, [list(range(11))])
    split = grads_for(model, xs, ys, [list(range(8)), list(range(8, 11))])  # 8 + 3: uneven on purpose
    for a, b in zip(full, split):
        torch.testing.assert_close(a, b)
    # the usual shortcut (mean per micro-batch, divided by the number of micro-batches) is wrong here
    model.zero_grad()
    for idx in [list(range(8)), list(range(8, 11))]:
        (torch.nn.functional.cross_entropy(model(xs[idx]).logits, ys[idx]) / 2).backward()
    assert not torch.allclose(full[0], model.linear.weight.grad)


def test_two_processes_share_of_the_mean():
    # DDP averages gradients over processes: world * sum / n_global per process gives the global mean.
    assert step_loss_scale(64, world_size=2) == pytest.approx(2 / 64)
    with pytest.raises(ValueError):
        step_loss_scale(0, 1)


def test_accumulation_windows():
    assert list(accumulation_windows(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(accumulation_windows([], 2)) == []


def test_loss_is_fp32_even_for_bf16_logits():
    model = Head(3, 2, dtype=torch.bfloat16)
    xs = torch.randn(4, 3).to(torch.bfloat16)
    assert model(xs).logits.dtype == torch.bfloat16
    assert classification_loss_sum(model, xs, torch.tensor([0, 1, 1, 0])).dtype == torch.float32


def test_nan_guard_message():
    check_finite(0.5, 1, 1e-3, "bf16")
    with pytest.raises(TrainingDiverged) as exc:
        check_finite(float("nan"), 17, 3e-2, "fp16")
    msg = str(exc.value)
    assert msg.startswith("loss became nan at step 17 (learning rate 0.03); training stopped.")
    assert "use train.precision: bf16 or fp32" in msg
    with pytest.raises(TrainingDiverged, match="loss became inf"):
        check_finite(math.inf, 1, 1.0, "fp32")


def test_throughput_window():
    meter = Throughput(window=3)
    assert meter.rates() == (0.0, 0.0)
    meter.update(0, 0, now=0.0)
    meter.update(100, 10, now=1.0)
    meter.update(300, 30, now=2.0)
    assert meter.rates() == (200.0, 20.0)
    meter.reset()
    assert meter.rates() == (0.0, 0.0)


def test_lr_schedules():
    assert lr_factor(0, total=100, warmup=10, kind="linear") == pytest.approx(0.1)
    assert lr_factor(9, total=100, warmup=10, kind="linear") == pytest.approx(1.0)
    assert lr_factor(55, total=100, warmup=10, kind="linear") == pytest.approx(0.5)
    assert lr_factor(100, total=100, warmup=10, kind="linear") == pytest.approx(0.0)
    assert lr_factor(55, total=100, warmup=10, kind="cosine") == pytest.approx(0.5)
    assert lr_factor(10, total=100, warmup=10, kind="cosine") == pytest.approx(1.0)
    assert lr_factor(80, total=100, warmup=0, kind="constant") == 1.0


class _Cfg:
    def __init__(self, optimizer):
        self.optimizer, self.learning_rate, self.weight_decay = optimizer, 1e-2, 0.1
        self.adam_betas, self.momentum = (0.9, 0.999), 0.9


def test_no_weight_decay_on_bias_and_norm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = parameter_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                      ("adafactor", torch.optim.Adafactor)])
def test_each_optimizer_reduces_loss(name, cls):
    torch.manual_seed(0)
    model = Head(4, 2)
    xs, ys = torch.randn(32, 4), torch.randint(0, 2, (32,))
    opt = build_optimizer(model, _Cfg(name))
    assert isinstance(opt, cls)
    first = None
    for _ in range(30):
        loss = classification_loss_sum(model, xs, ys) / 32
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_frozen_everything_is_an_error():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, _Cfg("adamw"))
