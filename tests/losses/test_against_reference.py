"""The vectorised loss against the loop implementation, for every option combination."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partialseg.labels import LabelRegistry
from partialseg.losses import PartialLabelLoss, deep_supervision_weights
from partialseg.losses._reference import reference_partial_label_loss

IGNORE = 255
LEVEL_SHAPES = [(6, 5, 4), (3, 3, 2), (2, 2, 1)]


def make_registry():
    registry = LabelRegistry()
    registry.add_dataset("D01", {"liver": [1, 2], "tumor": [2]})
    registry.add_dataset("D02", {"liver": [1], "spleen": [2], "kidney": [3]})
    return registry


def encode_by_loop(registry, label_maps, dataset_names):
    """Encode with one np.isin per class, independent of the lookup tables."""
    label_maps = label_maps.numpy()
    out = np.zeros((len(dataset_names), registry.num_classes, *label_maps.shape[1:]))
    for b, name in enumerate(dataset_names):
        channel = 0
        for dataset in registry.dataset_names:
            for values in registry.dataset(dataset).classes.values():
                if dataset == name:
                    out[b, channel] = np.isin(label_maps[b], values)
                channel += 1
        out[b][:, label_maps[b] == IGNORE] = IGNORE
    return torch.from_numpy(out)


def random_case(generator, *, label_maps, ignore, levels):
    registry = make_registry()
    dataset_names = ["D01", "D02", "D01"]
    num_samples, num_classes = len(dataset_names), registry.num_classes
    shapes = LEVEL_SHAPES[:levels]
    logits = [
        (2 * torch.randn(num_samples, num_classes, *shape, generator=generator)).requires_grad_()
        for shape in shapes
    ]
    annotated = registry.annotated_mask(dataset_names)
    if label_maps:
        maps = torch.randint(0, 4, (num_samples, *shapes[0]), generator=generator)
        maps[0][maps[0] == 3] = 0  # D01 has no value 3
        maps[2] = 0  # sample 2 is all background, so its classes are empty
        if ignore:
            maps[:, 0, 0, :2] = IGNORE
        targets = maps
        reference_full = encode_by_loop(registry, maps, dataset_names)
    else:
        binary = torch.rand(num_samples, num_classes, *shapes[0], generator=generator) > 0.7
        binary = binary.to(torch.uint8)
        binary[1, 1] = 0  # an annotated empty class
        if ignore:
            binary[torch.rand(binary.shape, generator=generator) < 0.1] = IGNORE
        targets = binary
        reference_full = binary.double()
    reference_levels = [
        F.interpolate(reference_full, size=shape, mode="nearest") for shape in shapes
    ]
    return registry, dataset_names, logits, targets, annotated, reference_levels


def gradient_of(tensor):
    """Return the gradient, or zeros for a level with weight 0 that got none."""
    return torch.zeros_like(tensor) if tensor.grad is None else tensor.grad.clone()


OPTIONS = list(
    itertools.product(
        [True, False],  # batch_dice
        ["sum", "mean"],  # class_reduction
        [0.0, 1.0],  # smooth
        [False, True],  # ignore
        [False, True],  # label maps
        [1, 3],  # deep-supervision levels
    )
)


def option_id(option):
    batch_dice, reduction, smooth, ignore, label_maps, levels = option
    return "-".join(
        [
            "batch" if batch_dice else "per-sample",
            reduction,
            f"smooth{smooth:g}",
            "ignore" if ignore else "no-ignore",
            "labelmap" if label_maps else "binary",
            f"levels{levels}",
        ]
    )


@pytest.mark.parametrize("option", OPTIONS, ids=[option_id(o) for o in OPTIONS])
def test_matches_loop_reference(option):
    batch_dice, reduction, smooth, ignore, label_maps, levels = option
    generator = torch.Generator().manual_seed(OPTIONS.index(option))
    registry, names, logits, targets, annotated, reference_targets = random_case(
        generator, label_maps=label_maps, ignore=ignore, levels=levels
    )
    kwargs = {"batch_dice": batch_dice, "class_reduction": reduction, "smooth": smooth}
    loss_fn = PartialLabelLoss(
        **kwargs, bce_weight=0.7, dice_weight=1.3, ignore_index=IGNORE if ignore else None
    )
    inputs = logits if levels > 1 else logits[0]
    loss = loss_fn(inputs, targets, annotated, dataset_names=names, registry=registry)
    loss.backward()
    gradients = [gradient_of(level) for level in logits]

    for level in logits:
        level.grad = None
    expected = reference_partial_label_loss(
        logits,
        reference_targets,
        annotated,
        weights=deep_supervision_weights(levels),
        **kwargs,
        bce_weight=0.7,
        dice_weight=1.3,
        ignore_index=IGNORE if ignore else None,
    )
    expected.backward()

    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    for gradient, level in zip(gradients, logits, strict=True):
        torch.testing.assert_close(gradient, gradient_of(level).float(), rtol=1e-4, atol=1e-6)
