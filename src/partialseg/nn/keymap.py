"""State-dict key names of nnU-Net v1 networks, as published by MultiTalent, and ours.

The published checkpoints store keys with the ``module.`` prefix of
``DistributedDataParallel``; the functions here accept keys with or without it.
``S`` is the number of encoder stages (6 in the published networks) and
``L = S - 1`` the number of decoder stages and head levels. nnU-Net v1 numbers
decoder stages and deep-supervision outputs from the lowest resolution, while
:class:`~partialseg.nn.heads.ClassHeads` numbers head levels from the highest
resolution, so v1 output ``u`` is head level ``L - 1 - u``.

Plain U-Net, with ``n`` convolutions per stage (2 published)::

    conv_blocks_context.{s}.blocks.{j}.conv.*       encoder.stages.{s}.{j}.conv.*      s < S-1
    conv_blocks_context.{s}.blocks.{j}.instnorm.*   encoder.stages.{s}.{j}.norm.*      s < S-1
    conv_blocks_context.{S-1}.0.blocks.{j}.*        encoder.stages.{S-1}.{j}.*         j < n-1
    conv_blocks_context.{S-1}.1.blocks.0.*          encoder.stages.{S-1}.{n-1}.*
    conv_blocks_localization.{u}.0.blocks.{j}.*     decoder.stages.{u}.{j}.*           j < n-1
    conv_blocks_localization.{u}.1.blocks.0.*       decoder.stages.{u}.{n-1}.*
    tu.{u}.weight                                   decoder.upsamples.{u}.weight
    seg_outputs.{u}.weight                          heads.weight.{L-1-u}

(``instnorm`` becomes ``norm`` in every row.) The lowest-resolution encoder
stage and every decoder stage are two nested stacks in v1. The first contains
all convolutions but the last, and the second contains the last one.

Residual-encoder U-Net::

    encoder.initial_conv.weight                     encoder.stem.conv.weight
    encoder.initial_norm.*                          encoder.stem.norm.*
    encoder.stages.{s}.convs.{b}.conv1|norm1|conv2|norm2.*
                                                    encoder.stages.{s}.{b}.conv1|norm1|conv2|norm2.*
    encoder.stages.{s}.convs.{b}.downsample_skip.{0|1}.*
                                                    encoder.stages.{s}.{b}.shortcut.{0|1}.*
    decoder.tus.{u}.weight                          decoder.upsamples.{u}.weight
    decoder.stages.{u}.convs.{j}.conv|norm.*        decoder.stages.{u}.{j}.conv|norm.*
    decoder.stages.{u}.convs.{j}.all.0.*            decoder.stages.{u}.{j}.conv.*   (alias)
    decoder.stages.{u}.convs.{j}.all.2.*            decoder.stages.{u}.{j}.norm.*   (alias)
    decoder.deep_supervision_outputs.{u}.*          heads.weight|bias.{L-1-u}

The v1 decoder convolution module registers its convolution and norm twice,
once by name and once inside the ``all`` sequence, so the published state dict
contains each of these tensors under two keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.resenc_unet import ResEncUNet
from partialseg.nn.unet import PlainUNet

__all__ = ["from_v1_state_dict", "to_v1_state_dict", "v1_key_map"]

DDP_PREFIX = "module."


def v1_key_map(network: SegmentationNetwork) -> dict[str, str]:
    """Map every nnU-Net v1 state-dict key of ``network``'s topology to our key.

    Several v1 keys map to the same key of ours where v1 stores aliases (the
    ``all.*`` keys of the residual-encoder decoder).

    Args:
        network: A :class:`~partialseg.nn.unet.PlainUNet` or
            :class:`~partialseg.nn.resenc_unet.ResEncUNet`.

    Returns:
        v1 key without the ``module.`` prefix -> our key.

    Raises:
        TypeError: If the network type has no v1 counterpart.

    Example:
        >>> from partialseg.nn import create_model
        >>> key_map = v1_key_map(create_model("multitalent_unet", features_per_stage=[2] * 6))
        >>> key_map["seg_outputs.0.weight"], key_map["tu.4.weight"]
        ('heads.weight.4', 'decoder.upsamples.4.weight')
    """
    if isinstance(network, PlainUNet):
        pairs = _plain_pairs(network.model_args)
    elif isinstance(network, ResEncUNet):
        pairs = _resenc_pairs(network.model_args)
    else:
        raise TypeError(
            f"no nnU-Net v1 key map for {type(network).__name__}; "
            "only PlainUNet and ResEncUNet have v1 counterparts"
        )
    return dict(pairs)


def from_v1_state_dict(
    state_dict: Mapping[str, Tensor], network: SegmentationNetwork
) -> dict[str, Tensor]:
    """Rename an nnU-Net v1 state dict to the keys of ``network``.

    Args:
        state_dict: v1 state dict; keys may carry the ``module.`` prefix.
        network: The network the weights are for; only its topology is read.

    Returns:
        A state dict for ``network.load_state_dict(..., strict=True)``.

    Raises:
        KeyError: If keys are missing or unexpected, listing them.
        ValueError: If two aliases of one tensor differ.
    """
    key_map = v1_key_map(network)
    stripped = {_strip_prefix(key): value for key, value in state_dict.items()}
    unexpected = sorted(set(stripped) - set(key_map))
    missing = sorted(set(key_map) - set(stripped))
    if unexpected or missing:
        raise KeyError(
            f"the v1 state dict does not match a {network.architecture} with "
            f"model_args={network.model_args}: missing keys {missing[:5]} "
            f"({len(missing)} in all), unexpected keys {unexpected[:5]} ({len(unexpected)} in all)"
        )
    converted: dict[str, Tensor] = {}
    for v1_key, our_key in key_map.items():
        value = stripped[v1_key]
        if our_key in converted and not torch.equal(converted[our_key], value):
            raise ValueError(f"v1 keys that alias {our_key!r} hold different values ({v1_key!r})")
        converted[our_key] = value
    return converted


def to_v1_state_dict(
    state_dict: Mapping[str, Tensor], network: SegmentationNetwork, *, prefix: str = ""
) -> dict[str, Tensor]:
    """Rename a state dict of ``network`` to nnU-Net v1 keys, aliases included.

    Args:
        state_dict: A state dict of ``network``.
        network: The network the weights belong to.
        prefix: Put before every key, for example ``"module."``.

    Returns:
        The v1 state dict.
    """
    return {prefix + v1: state_dict[ours] for v1, ours in v1_key_map(network).items()}


def _strip_prefix(key: str) -> str:
    return key[len(DDP_PREFIX) :] if key.startswith(DDP_PREFIX) else key


def _conv_norm_pairs(v1: str, ours: str, *, bias: bool) -> list[tuple[str, str]]:
    names = ["weight", "bias"] if bias else ["weight"]
    pairs = [(f"{v1}.conv.{name}", f"{ours}.conv.{name}") for name in names]
    pairs += [(f"{v1}.instnorm.{name}", f"{ours}.norm.{name}") for name in ("weight", "bias")]
    return pairs


def _stacked_pairs(v1: str, ours: str, num_convs: int) -> list[tuple[str, str]]:
    # v1 splits these stages into two stacks: all convolutions but the last, then the last.
    # NOTE: only the published layout with two convolutions per stage has been checked.
    pairs = []
    for j in range(num_convs):
        v1_block = f"{v1}.0.blocks.{j}" if j < num_convs - 1 else f"{v1}.1.blocks.0"
        pairs += _conv_norm_pairs(v1_block, f"{ours}.{j}", bias=True)
    return pairs


def _plain_pairs(args: Mapping) -> list[tuple[str, str]]:
    num_stages = len(args["features_per_stage"])
    levels = num_stages - 1
    pairs = []
    for s in range(num_stages - 1):
        for j in range(args["n_conv_per_stage"]):
            v1 = f"conv_blocks_context.{s}.blocks.{j}"
            pairs += _conv_norm_pairs(v1, f"encoder.stages.{s}.{j}", bias=True)
    last = num_stages - 1
    pairs += _stacked_pairs(
        f"conv_blocks_context.{last}", f"encoder.stages.{last}", args["n_conv_per_stage"]
    )
    for u in range(levels):
        pairs += _stacked_pairs(
            f"conv_blocks_localization.{u}",
            f"decoder.stages.{u}",
            args["n_conv_per_stage_decoder"],
        )
        pairs.append((f"tu.{u}.weight", f"decoder.upsamples.{u}.weight"))
        pairs.append((f"seg_outputs.{u}.weight", f"heads.weight.{levels - 1 - u}"))
    return pairs


def _resenc_pairs(args: Mapping) -> list[tuple[str, str]]:
    num_stages = len(args["features_per_stage"])
    levels = num_stages - 1
    affine = ("weight", "bias")
    pairs = [("encoder.initial_conv.weight", "encoder.stem.conv.weight")]
    pairs += [(f"encoder.initial_norm.{p}", f"encoder.stem.norm.{p}") for p in affine]

    for s, count in enumerate(args["blocks_per_stage"]):
        for b in range(count):
            v1, ours = f"encoder.stages.{s}.convs.{b}", f"encoder.stages.{s}.{b}"
            for conv, norm in (("conv1", "norm1"), ("conv2", "norm2")):
                pairs.append((f"{v1}.{conv}.weight", f"{ours}.{conv}.weight"))
                pairs += [(f"{v1}.{norm}.{p}", f"{ours}.{norm}.{p}") for p in affine]
            if _has_shortcut(args, s, b):
                pairs.append((f"{v1}.downsample_skip.0.weight", f"{ours}.shortcut.0.weight"))
                pairs += [(f"{v1}.downsample_skip.1.{p}", f"{ours}.shortcut.1.{p}") for p in affine]

    for u in range(levels):
        pairs.append((f"decoder.tus.{u}.weight", f"decoder.upsamples.{u}.weight"))
        for j in range(args["n_conv_per_stage_decoder"]):
            v1, ours = f"decoder.stages.{u}.convs.{j}", f"decoder.stages.{u}.{j}"
            for conv_name in (f"{v1}.conv", f"{v1}.all.0"):
                pairs.append((f"{conv_name}.weight", f"{ours}.conv.weight"))
            for norm_name in (f"{v1}.norm", f"{v1}.all.2"):
                pairs += [(f"{norm_name}.{p}", f"{ours}.norm.{p}") for p in affine]
        for p in affine:
            pairs.append(
                (f"decoder.deep_supervision_outputs.{u}.{p}", f"heads.{p}.{levels - 1 - u}")
            )
    return pairs


def _has_shortcut(args: Mapping, stage: int, block: int) -> bool:
    if block > 0:
        return False
    features = args["features_per_stage"]
    in_channels = features[stage - 1] if stage > 0 else features[0]
    return in_channels != features[stage] or any(s != 1 for s in args["strides"][stage])
