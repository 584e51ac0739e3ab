import pytest
import torch
from torch import nn

from partialseg.schedules import (
    FineTuningOptimizers,
    WarmupSchedule,
    build_finetuning_optimizers,
    poly_lr,
)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.heads = nn.Linear(4, 2)

    def forward(self, x):
        return self.heads(torch.relu(self.encoder(x)))


@pytest.mark.parametrize(
    ("epoch", "phase", "lr"),
    [
        (0, "heads", 5e-5),
        (9, "heads", 5e-4),
        (10, "warmup", 2e-4),
        (59, "warmup", 1e-2),
        (60, "poly", 1e-2),
        (61, "poly", 1e-2 * (1 - 1 / 1000) ** 0.9),
        (560, "poly", 1e-2 * 0.5**0.9),
        (1059, "poly", 1e-2 * (1 / 1000) ** 0.9),
        (1060, "poly", 0.0),
    ],
)
def test_published_schedule_boundaries(epoch, phase, lr):
    schedule = WarmupSchedule()
    assert schedule.phase_at(epoch) == phase
    assert schedule.lr_at(epoch) == pytest.approx(lr, rel=1e-12, abs=0)


def test_total_epochs():
    assert WarmupSchedule().total_epochs == 1060


def test_ramps_rise_linearly():
    schedule = WarmupSchedule()
    heads = [schedule.lr_at(e) for e in range(10)]
    warmup = [schedule.lr_at(e) for e in range(10, 60)]
    assert heads == pytest.approx([5e-4 * (e + 1) / 10 for e in range(10)])
    assert warmup == pytest.approx([1e-2 * (e + 1) / 50 for e in range(50)])


def test_without_warmup_is_plain_poly():
    schedule = WarmupSchedule(head_epochs=0, warmup_epochs=0)
    for epoch in (0, 1, 500, 999):
        assert schedule.lr_at(epoch) == poly_lr(epoch, base_lr=1e-2, max_epochs=1000)
        assert schedule.phase_at(epoch) == "poly"


def test_heads_phase_trains_only_heads():
    torch.manual_seed(0)
    model = TinyNet()
    optimizers = build_finetuning_optimizers(model)
    schedule = WarmupSchedule(head_lr=1e-1)
    encoder_before = model.encoder.weight.detach().clone()
    heads_before = model.heads.weight.detach().clone()

    phase = schedule.apply(optimizers, 0)
    optimizer = optimizers.optimizer_for(phase)
    optimizer.zero_grad()
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()

    assert phase == "heads"
    assert isinstance(optimizer, torch.optim.AdamW)
    assert torch.equal(model.encoder.weight, encoder_before)
    assert not torch.equal(model.heads.weight, heads_before)


def test_warmup_phase_trains_everything():
    torch.manual_seed(0)
    model = TinyNet()
    optimizers = build_finetuning_optimizers(model)
    schedule = WarmupSchedule()
    schedule.apply(optimizers, 0)
    encoder_before = model.encoder.weight.detach().clone()

    phase = schedule.apply(optimizers, 10)
    optimizer = optimizers.optimizer_for(phase)
    optimizer.zero_grad()
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()

    assert isinstance(optimizer, torch.optim.SGD)
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(model.encoder.weight, encoder_before)


def test_apply_sets_lr_of_both_optimizers():
    optimizers = build_finetuning_optimizers(TinyNet())
    WarmupSchedule().apply(optimizers, 59)
    assert optimizers.heads.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert optimizers.network.param_groups[0]["lr"] == pytest.approx(1e-2)


def test_published_optimizer_settings():
    optimizers = build_finetuning_optimizers(TinyNet())
    heads = optimizers.heads.defaults
    network = optimizers.network.defaults
    assert heads["amsgrad"] is True
    assert heads["weight_decay"] == 3e-5
    assert network["nesterov"] is True
    assert network["momentum"] == 0.99
    assert network["weight_decay"] == 3e-5
    assert len(optimizers.heads.param_groups[0]["params"]) == 2
    assert len(optimizers.network.param_groups[0]["params"]) == 4


def test_user_frozen_parameters_stay_frozen():
    model = TinyNet()
    model.encoder.bias.requires_grad_(False)
    schedule = WarmupSchedule()
    schedule.apply(model, 0)
    assert not model.encoder.weight.requires_grad
    assert model.heads.weight.requires_grad
    schedule.apply(model, 10)
    assert model.encoder.weight.requires_grad
    assert not model.encoder.bias.requires_grad


def test_model_without_heads_raises():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"no parameter name starts with 'heads\.'"):
        WarmupSchedule().apply(model, 0)


def test_custom_heads_prefix():
    model = nn.ModuleDict({"body": nn.Linear(2, 2), "out": nn.Linear(2, 1)})
    WarmupSchedule(heads_prefix="out.").apply(model, 0)
    assert not model["body"].weight.requires_grad
    assert model["out"].weight.requires_grad


def test_step_uses_bound_optimizer():
    optimizer = torch.optim.SGD(TinyNet().parameters(), lr=1.0)
    schedule = WarmupSchedule(optimizer)
    assert schedule.step(10) == "warmup"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_step_without_target_raises():
    with pytest.raises(ValueError, match=r"step\(\) needs the target"):
        WarmupSchedule().step(0)


def test_apply_rejects_other_targets():
    with pytest.raises(TypeError, match="got str"):
        WarmupSchedule().apply("model", 0)


def test_state_dict_round_trip_resumes_unfreezing():
    model = TinyNet()
    schedule = WarmupSchedule(poly_epochs=200)
    schedule.apply(model, 5)
    restored = WarmupSchedule()
    restored.load_state_dict(schedule.state_dict())
    assert restored.total_epochs == 260
    assert restored.last_epoch == 5
    assert restored.lr_at(100) == schedule.lr_at(100)
    restored.apply(model, 10)
    assert model.encoder.weight.requires_grad


def test_optimizer_state_round_trip():
    model = TinyNet()
    optimizers = build_finetuning_optimizers(model)
    state = optimizers.state_dict()
    other = build_finetuning_optimizers(model)
    other.load_state_dict(state)
    assert isinstance(other, FineTuningOptimizers)
    assert other.heads.state_dict()["param_groups"] == state["heads"]["param_groups"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_epochs": -1}, "head_epochs must be a non-negative int"),
        ({"warmup_epochs": 1.5}, "warmup_epochs must be a non-negative int"),
        ({"poly_epochs": 0}, "poly_epochs must be a positive int"),
        ({"base_lr": 0.0}, "base_lr must be a positive number"),
        ({"head_lr": float("nan")}, "head_lr must be a positive number"),
    ],
    ids=["negative-heads", "float-warmup", "zero-poly", "zero-lr", "nan-lr"],
)
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupSchedule(**kwargs)


def test_negative_epoch_raises():
    with pytest.raises(ValueError, match="epoch must be a non-negative int, got -1"):
        WarmupSchedule().lr_at(-1)
