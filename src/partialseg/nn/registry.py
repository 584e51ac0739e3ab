"""Registry of network builders: :func:`register_model`, :func:`create_model`, :func:`list_models`.

A builder is a function ``builder(*, class_names, **kwargs) -> SegmentationNetwork``
whose ``class_names`` is a list of names or None (then the builder uses its
default classes or raises). Every network stores the keyword arguments that
rebuild it in ``model_args``, so ``create_model(net.architecture,
classes=net.class_names, **net.model_args)`` rebuilds the same topology.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.resources
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.heads import unknown_name_message

__all__ = [
    "create_model",
    "list_models",
    "multitalent_class_names",
    "register_model",
    "resolve_classes",
]

Builder = TypeVar("Builder", bound=Callable[..., SegmentationNetwork])

_BUILDERS: dict[str, Callable[..., SegmentationNetwork]] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a network builder under ``name``.

    Args:
        name: Registry name, passed to :func:`create_model`.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: If ``name`` is registered already.

    Example:
        >>> @register_model("doctest_unet")
        ... def doctest_unet(*, class_names, **kwargs):
        ...     from partialseg.nn.unet import PlainUNet
        ...     return PlainUNet(class_names=class_names, architecture="doctest_unet",
        ...                      features_per_stage=[2, 4], strides=[1, 2], **kwargs)
        >>> "doctest_unet" in list_models()
        True
        >>> _ = _BUILDERS.pop("doctest_unet")
    """

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"a model named {name!r} is registered already")
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Return the sorted names of the registered networks matching a shell pattern.

    Example:
        >>> "multitalent_unet" in list_models("multitalent_*")
        True
    """
    return sorted(name for name in _BUILDERS if fnmatch.fnmatchcase(name, pattern))


def resolve_classes(classes: Sequence[str] | int | Any | None) -> list[str] | None:
    """Turn a ``classes`` argument into a list of class names.

    Args:
        classes: A sequence of names, a class count (named ``class_0``,
            ``class_1``, ...), an object with a ``class_names`` attribute such as
            a :class:`~partialseg.labels.LabelRegistry`, or None.

    Returns:
        The class names, or None when ``classes`` is None.

    Raises:
        TypeError: If ``classes`` has none of these forms.
        ValueError: If the count is not positive or the names are empty.

    Example:
        >>> resolve_classes(2)
        ['class_0', 'class_1']
    """
    if classes is None:
        return None
    if hasattr(classes, "class_names"):
        classes = classes.class_names
    if isinstance(classes, bool):
        raise TypeError(f"classes must be names, a count or a label registry, got {classes!r}")
    if isinstance(classes, int):
        if classes < 1:
            raise ValueError(f"classes must be a positive count, got {classes}")
        return [f"class_{i}" for i in range(classes)]
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(
            "classes must be a sequence of class names, a class count or an object with a "
            f"class_names attribute, got {type(classes).__name__}"
        )
    names = list(classes)
    if not names:
        raise ValueError("classes must contain at least one class name")
    return names


def create_model(
    name: str,
    *,
    classes: Sequence[str] | int | Any | None = None,
    **kwargs: Any,
) -> SegmentationNetwork:
    """Build a registered network.

    Args:
        name: A name from :func:`list_models`.
        classes: Output classes: names, a count, or an object with a
            ``class_names`` attribute. None uses the network's default classes
            where it has some (the 47 published classes for ``multitalent_*``).
        **kwargs: Topology options of the network, for example ``model_args`` of
            a saved network.

    Returns:
        The network, randomly initialised.

    Raises:
        ValueError: If ``name`` is not registered or the network has no default classes.

    Example:
        >>> net = create_model("plain_unet", classes=["liver", "spleen"])
        >>> net.class_names
        ['liver', 'spleen']
    """
    if name not in _BUILDERS:
        raise ValueError(unknown_name_message("model", name, list_models()))
    return _BUILDERS[name](class_names=resolve_classes(classes), **kwargs)


@functools.cache
def _multitalent_channels() -> tuple[dict[str, Any], ...]:
    resource = importlib.resources.files("partialseg") / "resources" / "multitalent_channels.json"
    return tuple(json.loads(resource.read_text(encoding="utf-8"))["channels"])


def multitalent_class_names() -> list[str]:
    """Return the 47 class names of the published MultiTalent networks, in channel order.

    Example:
        >>> names = multitalent_class_names()
        >>> len(names), names[:2]
        (47, ['03_liver', '03_cancer'])
    """
    return [channel["region"] for channel in _multitalent_channels()]


def multitalent_plans(name: str) -> dict[str, Any]:
    """Return one published plan from the packaged ``plans_summary.json``.

    Args:
        name: ``"plain"`` or ``"resenc"``.
    """
    files = {
        "plain": "MultiTalent_bs4_plans_3D.pkl",
        "resenc": "MultiTalent_resenc_bs4_plans_3D.pkl",
    }
    resource = importlib.resources.files("partialseg") / "resources" / "plans_summary.json"
    return json.loads(resource.read_text(encoding="utf-8"))[files[name]]
