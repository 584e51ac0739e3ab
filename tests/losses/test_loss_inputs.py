"""Label-map targets, registry integration, precision and input errors of the loss."""

import pytest
import torch
import torch.nn.functional as F

from partialseg.labels import LabelRegistry
from partialseg.losses import PartialLabelLoss


@pytest.fixture
def registry():
    registry = LabelRegistry()
    registry.add_dataset("D01", {"liver": [1, 2], "tumor": [2]})
    registry.add_dataset("D02", {"spleen": [1]}, ignore_value=9)
    return registry


def random_logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_label_maps_equal_encoded_binary_maps(registry):
    label_maps = torch.tensor([[[0, 1, 2, 2]], [[1, 0, 0, 1]]])
    names = ["D01", "D02"]
    logits = random_logits(2, 3, 1, 4)
    loss_fn = PartialLabelLoss(registry=registry)
    from_maps = loss_fn(logits, label_maps, dataset_names=names)
    binary = registry.encode_batch(label_maps, names)
    from_binary = loss_fn(logits, binary, registry.annotated_mask(names))
    assert from_maps.item() == pytest.approx(from_binary.item(), abs=1e-6)


def test_registry_in_call_overrides_constructor(registry):
    other = LabelRegistry()
    other.add_dataset("X", {"a": [1], "b": [2], "c": [3]})
    label_maps = torch.tensor([[[0, 1, 2, 2]]])
    logits = random_logits(1, 3, 1, 4)
    loss_fn = PartialLabelLoss(registry=other)
    in_call = loss_fn(logits, label_maps, dataset_names=["D01"], registry=registry)
    expected = PartialLabelLoss(registry=registry)(logits, label_maps, dataset_names=["D01"])
    assert in_call.item() == expected.item()


def test_dataset_ignore_value_is_left_out(registry):
    logits = random_logits(1, 3, 6)
    with_ignored = torch.tensor([[0, 1, 9, 9, 1, 0]])
    loss_fn = PartialLabelLoss(registry=registry)
    loss = loss_fn(logits, with_ignored, dataset_names=["D02"])
    kept_voxels = [0, 1, 4, 5]
    expected = loss_fn(
        logits[..., kept_voxels], with_ignored[..., kept_voxels], dataset_names=["D02"]
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_ignore_index_in_label_maps(registry):
    logits = random_logits(1, 3, 5)
    label_maps = torch.tensor([[2, 255, 1, 0, 255]])
    loss_fn = PartialLabelLoss(registry=registry, ignore_index=255)
    loss = loss_fn(logits, label_maps, dataset_names=["D01"])
    kept_voxels = [0, 2, 3]
    expected = loss_fn(
        logits[..., kept_voxels], label_maps[..., kept_voxels], dataset_names=["D01"]
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_single_label_map_is_downsampled_per_level(registry):
    label_maps = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(2))
    names = ["D01", "D01"]
    logits = [random_logits(2, 3, 8, 8), random_logits(2, 3, 4, 4, seed=1)]
    loss_fn = PartialLabelLoss(registry=registry, deep_supervision_weights=[0.5, 0.5])
    single = loss_fn(logits, label_maps, dataset_names=names)
    low = F.interpolate(label_maps[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    explicit = loss_fn(logits, [label_maps, low], dataset_names=names)
    assert single.item() == pytest.approx(explicit.item(), abs=1e-6)


def test_single_binary_map_is_downsampled_per_level():
    targets = (torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    logits = [random_logits(1, 2, 8, 8), random_logits(1, 2, 4, 4, seed=1)]
    annotated = torch.ones(1, 2, dtype=torch.bool)
    loss_fn = PartialLabelLoss(deep_supervision_weights=[0.5, 0.5])
    low = F.interpolate(targets, size=(4, 4), mode="nearest")
    single = loss_fn(logits, targets, annotated)
    explicit = loss_fn(logits, [targets, low], annotated)
    assert single.item() == pytest.approx(explicit.item(), abs=1e-6)


def test_bce_value_is_exact_for_confident_logits():
    generator = torch.Generator().manual_seed(4)
    targets = (torch.rand(1, 2, 100_000, generator=generator) > 0.8).float()
    logits = (2 * targets - 1) * 30 * torch.rand(targets.shape, generator=generator)
    annotated = torch.ones(1, 2, dtype=torch.bool)
    loss = PartialLabelLoss(dice_weight=0.0)(logits, targets, annotated)
    expected = F.binary_cross_entropy_with_logits(
        logits.double(), targets.double(), reduction="none"
    ).mean(-1)
    assert loss.item() == pytest.approx(expected.sum().item(), rel=1e-5)


def test_annotated_defaults_to_registry_mask(registry):
    label_maps = torch.tensor([[0, 1, 9], [1, 2, 0]])
    logits = random_logits(2, 3, 3)
    names = ["D02", "D01"]
    loss_fn = PartialLabelLoss(registry=registry)
    implicit = loss_fn(logits, label_maps, dataset_names=names)
    explicit = loss_fn(logits, label_maps, registry.annotated_mask(names), dataset_names=names)
    assert implicit.item() == explicit.item()


def test_label_maps_need_registry():
    with pytest.raises(ValueError, match="need registry= and dataset_names="):
        PartialLabelLoss()(
            random_logits(1, 2, 4), torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 2).bool()
        )


def test_missing_annotated_raises():
    with pytest.raises(ValueError, match="annotated is required"):
        PartialLabelLoss()(random_logits(1, 2, 4), torch.zeros(1, 2, 4))


def test_annotated_must_be_bool():
    with pytest.raises(TypeError, match=r"convert it with \.bool\(\)"):
        PartialLabelLoss()(random_logits(1, 2, 4), torch.zeros(1, 2, 4), torch.ones(1, 2))


def test_registry_class_count_mismatch(registry):
    with pytest.raises(ValueError, match="registry has 3 classes but the logits have 2"):
        PartialLabelLoss(registry=registry)(
            random_logits(1, 2, 4), torch.zeros(1, 4, dtype=torch.long), dataset_names=["D01"]
        )


def test_dataset_names_length_mismatch(registry):
    with pytest.raises(ValueError, match=r"one dataset per sample \(2\)"):
        PartialLabelLoss(registry=registry)(
            random_logits(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), dataset_names=["D01"]
        )


def test_binary_targets_out_of_range():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[0, 2\]"):
        PartialLabelLoss()(
            random_logits(1, 1, 3), torch.tensor([[[0, 1, 2]]]), torch.ones(1, 1).bool()
        )


def test_undeclared_label_value_raises(registry):
    with pytest.raises(ValueError, match=r"undeclared label value\(s\) \[7\]"):
        PartialLabelLoss(registry=registry)(
            random_logits(1, 3, 3), torch.tensor([[0, 7, 1]]), dataset_names=["D01"]
        )


def test_integer_logits_raise():
    with pytest.raises(TypeError, match="floating-point"):
        PartialLabelLoss()(torch.zeros(1, 1, 3, dtype=torch.long), torch.zeros(1, 1, 3), None)


def test_distributed_without_process_group_raises():
    loss_fn = PartialLabelLoss(distributed=True)
    with pytest.raises(ValueError, match=r"needs an initialised torch\.distributed"):
        loss_fn(random_logits(1, 1, 3), torch.zeros(1, 1, 3), torch.ones(1, 1).bool())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_reduction": "max"}, "class_reduction must be one of"),
        ({"smooth": -1.0}, "smooth must be finite non-negative numbers, got -1.0"),
        ({"bce_weight": float("inf")}, "bce_weight must be finite non-negative"),
        ({"deep_supervision_weights": []}, "deep_supervision_weights must not be empty"),
        ({"deep_supervision_weights": [1.0, -0.5]}, r"got \[1\.0, -0\.5\]"),
    ],
    ids=["reduction", "smooth", "bce-weight", "empty-weights", "negative-weight"],
)
def test_invalid_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PartialLabelLoss(**kwargs)


def test_weight_count_mismatch_raises():
    loss_fn = PartialLabelLoss(deep_supervision_weights=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="has 3 entries but the network returned 2 levels"):
        loss_fn([random_logits(1, 1, 4)] * 2, torch.zeros(1, 1, 4), torch.ones(1, 1).bool())


def test_autocast_does_not_lower_precision(registry):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 16, 16, 16, generator=generator)
    label_maps = torch.randint(0, 3, (2, 16, 16, 16), generator=generator)
    label_maps[:, 0] = 255
    names = ["D01", "D01"]
    loss_fn = PartialLabelLoss(registry=registry, ignore_index=255)
    expected = loss_fn(logits, label_maps, dataset_names=names)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = loss_fn(logits, label_maps, dataset_names=names)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(expected.item(), rel=1e-6)
