"""Training augmentation with TorchIO, modelled on nnU-Net's default set."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio


class Augmentation:
    """Spatial and intensity augmentation of an (image, label) patch pair.

    The set follows nnU-Net's defaults: rotation and scaling (0.7-1.4), Gaussian
    noise, blur, brightness and contrast (random bias of the intensity), gamma and
    optional mirroring. Label maps go through the same spatial transforms with
    nearest-neighbour interpolation, which TorchIO applies to ``LabelMap`` objects.

    Mirroring is off by default because it swaps left and right, and many organ
    classes are sided (left and right kidney, parotid).

    Args:
        rotation_degrees: Maximum rotation in degrees about each axis.
        scales: Range of the isotropic scaling factor.
        mirror_axes: Axes (0, 1, 2 of the z, y, x patch) to flip at random.
        probability: Probability of applying each transform.
        seed: Seed of TorchIO's random draws, set once at construction.

    Example:
        >>> augment = Augmentation(seed=0)
        >>> image, label = torch.zeros(1, 8, 16, 16), torch.zeros(1, 8, 16, 16, dtype=torch.long)
        >>> out_image, out_label = augment(image, label)
        >>> tuple(out_image.shape), tuple(out_label.shape)
        ((1, 8, 16, 16), (1, 8, 16, 16))
    """

    def __init__(
        self,
        *,
        rotation_degrees: float = 15.0,
        scales: tuple[float, float] = (0.7, 1.4),
        mirror_axes: Sequence[int] = (),
        probability: float = 0.2,
        seed: int | None = None,
    ) -> None:
        if seed is not None:
            torch.manual_seed(seed)
        transforms: list[tio.Transform] = [
            tio.RandomAffine(
                scales=scales,
                degrees=rotation_degrees,
                isotropic=True,
                default_pad_value="minimum",
                p=probability,
            ),
            tio.RandomNoise(std=(0.0, 0.1), p=0.1),
            tio.RandomBlur(std=(0.5, 1.0), p=probability),
            tio.RandomGamma(log_gamma=(-0.3, 0.4), p=0.3),
        ]
        if mirror_axes:
            transforms.append(tio.RandomFlip(axes=tuple(mirror_axes), flip_probability=0.5))
        self.transform = tio.Compose(transforms)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one image patch (1, z, y, x) and its label patch of the same shape."""
        subject = tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label))
        augmented = self.transform(subject)
        return augmented["image"].data, augmented["label"].data
