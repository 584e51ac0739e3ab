import math

import pytest
import torch

from partialseg.losses import PartialLabelLoss, deep_supervision_weights

LOG3 = math.log(3.0)  # sigmoid(log 3) = 0.75


def test_unannotated_class_contributes_nothing():
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    targets = torch.tensor([[[1, 1, 0, 0], [1, 0, 1, 0]]])
    annotated = torch.tensor([[True, False]])
    loss = PartialLabelLoss()(logits, targets, annotated)
    # BCE: log 2 per voxel. Dice: 2 * 1 / (2 + 2) = 0.5.
    assert loss.item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)
    assert torch.any(logits.grad[:, 0] != 0)


def test_unannotated_class_ignores_its_logits():
    targets = torch.tensor([[[1, 1, 0, 0], [1, 0, 1, 0]]])
    annotated = torch.tensor([[True, False]])
    base = torch.zeros(1, 2, 4)
    changed = base.clone()
    changed[:, 1] = torch.tensor([9.0, -7.0, 3.0, 40.0])
    loss_fn = PartialLabelLoss()
    assert loss_fn(base, targets, annotated).item() == loss_fn(changed, targets, annotated).item()


def test_empty_class_with_zero_prediction_gives_zero():
    logits = torch.full((1, 1, 8), -100.0, requires_grad=True)
    targets = torch.zeros(1, 1, 8)
    loss = PartialLabelLoss()(logits, targets, torch.tensor([[True]]))
    # BCE is log(1 + e^-100) ~ 4e-44; Dice is 0 / max(~1e-43, 1e-7) = 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_empty_class_with_positive_prediction_gives_bce_only():
    logits = torch.full((1, 1, 2), LOG3)
    targets = torch.zeros(1, 1, 2)
    loss = PartialLabelLoss()(logits, targets, torch.tensor([[True]]))
    # BCE is -log(1 - 0.75) per voxel, and Dice is 0 because TP is 0.
    assert loss.item() == pytest.approx(-math.log(0.25), abs=1e-6)


def test_batch_dice_pools_annotated_samples():
    logits = torch.tensor(
        [
            [[LOG3, -LOG3], [5.0, 5.0]],  # sample 0: class 1 unannotated
            [[-LOG3, -LOG3], [-LOG3, -LOG3]],
        ]
    )
    targets = torch.tensor([[[1, 0], [1, 1]], [[1, 1], [0, 0]]])
    annotated = torch.tensor([[True, False], [True, True]])
    loss = PartialLabelLoss()(logits, targets, annotated)
    bce = -math.log(0.75) + -math.log(0.25) + -math.log(0.75)
    # Class 0 pools both samples: TP = 0.75 + 0.5, sum p = 1.5, sum g = 3.
    dice_class0 = 2 * 1.25 / 4.5
    dice_class1 = 0.0
    assert loss.item() == pytest.approx(bce - dice_class0 - dice_class1, abs=1e-5)


def test_bce_is_summed_over_pairs_not_averaged():
    logits = torch.zeros(3, 2, 5)
    targets = torch.zeros(3, 2, 5)
    annotated = torch.ones(3, 2, dtype=torch.bool)
    loss = PartialLabelLoss()(logits, targets, annotated)
    # Six annotated pairs of BCE log 2 each, and every class is empty (Dice 0).
    assert loss.item() == pytest.approx(6 * math.log(2), abs=1e-5)


def test_deep_supervision_weights_levels():
    level0 = torch.zeros(1, 2, 4)
    level1 = torch.zeros(1, 2, 2)
    level2 = torch.full((1, 2, 1), 50.0)
    targets = [
        torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]]]),
        torch.tensor([[[1, 1], [0, 0]]]),
        torch.tensor([[[0], [0]]]),
    ]
    annotated = torch.tensor([[True, False]])
    loss = PartialLabelLoss()([level0, level1, level2], targets, annotated)
    value0 = math.log(2) - 0.5  # Dice 2 * 1 / (2 + 2)
    value1 = math.log(2) - 2 / 3  # Dice 2 * 1 / (1 + 2)
    # Weights (4, 2, 0) / 6: the lowest level does not count.
    assert loss.item() == pytest.approx(4 / 6 * value0 + 2 / 6 * value1, abs=1e-6)


def test_single_tensor_uses_weight_one():
    logits = torch.zeros(1, 1, 4)
    targets = torch.tensor([[[1, 1, 0, 0]]])
    annotated = torch.tensor([[True]])
    single = PartialLabelLoss()(logits, targets, annotated)
    assert single.item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)


def test_custom_deep_supervision_weights():
    logits = [torch.zeros(1, 1, 4), torch.zeros(1, 1, 2)]
    targets = [torch.tensor([[[1, 1, 0, 0]]]), torch.tensor([[[1, 1]]])]
    annotated = torch.tensor([[True]])
    loss = PartialLabelLoss(deep_supervision_weights=[0.0, 1.0])(logits, targets, annotated)
    assert loss.item() == pytest.approx(math.log(2) - 2 / 3, abs=1e-6)


def test_deep_supervision_weights_function():
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(1) == [1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_logits_give_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=generator).to(dtype)
    targets = torch.rand(2, 3, 4, 4, 4, generator=generator) > 0.5
    annotated = torch.tensor([[True, True, False], [False, True, True]])
    loss_fn = PartialLabelLoss()
    half = loss_fn(logits, targets, annotated)
    full = loss_fn(logits.float(), targets, annotated)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), abs=1e-6)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[[6e4, -6e4, 6e4, -6e4]]], dtype=torch.float16, requires_grad=True)
    targets = torch.tensor([[[0, 1, 1, 0]]])
    loss = PartialLabelLoss()(logits, targets, torch.tensor([[True]]))
    assert torch.isfinite(loss)
    # Two voxels are wrong by 6e4, so the mean BCE is 3e4; Dice is 2 * 1 / (2 + 2).
    assert loss.item() == pytest.approx(3e4 - 0.5, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "target_dtype", [torch.bool, torch.uint8, torch.int64, torch.float32], ids=str
)
def test_target_dtypes_agree(target_dtype):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 6, 6, generator=generator)
    targets = torch.rand(2, 2, 6, 6, generator=generator) > 0.6
    annotated = torch.tensor([[True, False], [True, True]])
    loss_fn = PartialLabelLoss()
    expected = loss_fn(logits, targets.float(), annotated)
    assert loss_fn(logits, targets.to(target_dtype), annotated).item() == pytest.approx(
        expected.item(), abs=1e-6
    )


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"targets at level 0 have shape \(1, 2, 5\)"):
        PartialLabelLoss()(torch.zeros(1, 2, 4), torch.zeros(1, 2, 5), torch.ones(1, 2).bool())


def test_annotated_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"annotated must have shape \(B, C\) = \(1, 2\)"):
        PartialLabelLoss()(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.ones(1, 3).bool())


def test_level_count_mismatch_raises():
    with pytest.raises(ValueError, match="logits levels"):
        PartialLabelLoss()(
            [torch.zeros(1, 1, 4)] * 2, [torch.zeros(1, 1, 4)], torch.ones(1, 1).bool()
        )
