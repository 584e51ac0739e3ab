"""The ``README.md`` model card written beside a saved network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from huggingface_hub import ModelCardData

if TYPE_CHECKING:
    from partialseg.labels import LabelRegistry
    from partialseg.nn.base import SegmentationNetwork

__all__ = ["DEFAULT_TAGS", "class_table_rows", "render_model_card"]

DEFAULT_TAGS = ("partialseg", "medical-imaging", "segmentation", "ct", "multitalent")

# Fixed by LabelRegistry: full class names are "<dataset>/<class>".
_CLASS_NAME_SEPARATOR = "/"


def render_model_card(
    network: SegmentationNetwork,
    *,
    model_id: str,
    license: str | None = None,
    tags: Sequence[str] | None = None,
) -> str:
    """Render the Markdown model card of a network, with YAML front matter for the Hub.

    The card lists every output channel with its class, dataset and label values,
    the preprocessing, and how to load the network and predict with it.

    Args:
        network: The network to describe.
        model_id: Hub repo id or directory shown in the usage examples.
        license: License identifier for the front matter, such as ``"cc-by-4.0"``.
        tags: Hub tags added to :data:`DEFAULT_TAGS`.

    Returns:
        The card text.

    Example:
        >>> from partialseg.nn import create_model
        >>> network = create_model("plain_unet", classes=["liver"],
        ...                        features_per_stage=[4, 8], strides=[1, 2])
        >>> card = render_model_card(network, model_id="org/tiny", license="mit")
        >>> print(card.splitlines()[1])
        library_name: partialseg
        >>> "| 0 | liver | - | - |" in card
        True
    """
    all_tags = list(dict.fromkeys([*DEFAULT_TAGS, *(tags or ())]))
    front_matter = ModelCardData(
        library_name="partialseg",
        license=license,
        pipeline_tag="image-segmentation",
        tags=all_tags,
    ).to_yaml()
    sections = [
        f"---\n{front_matter}\n---",
        _overview(network, model_id),
        _class_table(network),
        _preprocessing_section(network),
        _usage(model_id),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def class_table_rows(
    class_names: Sequence[str], registry: LabelRegistry | None
) -> list[tuple[int, str, str, str]]:
    """Return (channel, class name, dataset, label values) for every output channel.

    Dataset and label values come from ``registry``; they are ``"-"`` for a class
    the registry does not contain.

    Args:
        class_names: Output class names in channel order.
        registry: The network's label registry, or None.

    Returns:
        One row per channel.

    Example:
        >>> from partialseg.labels import LabelRegistry
        >>> registry = LabelRegistry()
        >>> registry.add_dataset("D03", {"pancreas": [1, 2], "cancer": [2]})
        >>> class_table_rows(registry.class_names, registry)
        [(0, 'D03/pancreas', 'D03', '1, 2'), (1, 'D03/cancer', 'D03', '2')]
    """
    rows = []
    for channel, name in enumerate(class_names):
        dataset, values = "-", "-"
        dataset_name, _, class_name = name.partition(_CLASS_NAME_SEPARATOR)
        if registry is not None and dataset_name in registry:
            classes = registry.dataset(dataset_name).classes
            if class_name in classes:
                dataset = dataset_name
                values = ", ".join(str(value) for value in classes[class_name])
        rows.append((channel, name, dataset, values))
    return rows


def _overview(network: SegmentationNetwork, model_id: str) -> str:
    parameters = sum(parameter.numel() for parameter in network.parameters())
    return (
        f"# {model_id}\n\n"
        f"A `{network.architecture}` segmentation network saved with "
        "[partialseg](https://pypi.org/project/partialseg/). It has "
        f"{network.num_classes} output channels and {parameters:,} parameters. Every "
        "channel is an independent sigmoid output (MultiTalent, Ulrich et al., MICCAI "
        "2023), so a voxel can belong to several classes, and there is no background "
        "channel."
    )


def _class_table(network: SegmentationNetwork) -> str:
    lines = [
        "## Classes",
        "",
        "| channel | class | dataset | label values |",
        "|---|---|---|---|",
    ]
    rows = class_table_rows(network.class_names, network.label_registry)
    lines += [
        f"| {channel} | {name} | {dataset} | {values} |" for channel, name, dataset, values in rows
    ]
    lines.append("")
    lines.append(
        "The label values are those of the dataset's own label maps that the class covers."
    )
    return "\n".join(lines)


def _preprocessing_section(network: SegmentationNetwork) -> str:
    preprocessing = network.preprocessing
    if preprocessing is None:
        return "## Preprocessing\n\nThe preprocessing was not saved with this model."
    spacing = " x ".join(f"{value:g}" for value in preprocessing.spacing)
    patch = " x ".join(str(value) for value in preprocessing.patch_size)
    low, high = preprocessing.ct_clip
    return (
        "## Preprocessing\n\n"
        f"- Voxel spacing: {spacing} mm (z, y, x)\n"
        f"- Patch size: {patch} voxels (z, y, x)\n"
        f"- CT intensities clipped to [{low:g}, {high:g}] HU, then normalised as "
        f"(x - {preprocessing.ct_mean:g}) / {preprocessing.ct_std:g}"
    )


def _usage(model_id: str) -> str:
    return (
        "## Usage\n\n"
        "```bash\n"
        "pip install partialseg\n"
        f"partialseg predict -m {model_id} -i ct.nii.gz -o predictions/\n"
        "```\n\n"
        "`predict` writes one mask per class, in the geometry of the input image. In "
        "Python:\n\n"
        "```python\n"
        "import torch\n"
        "from partialseg.hub import from_pretrained\n\n"
        f'network = from_pretrained("{model_id}")\n'
        "# patch: a (1, 1, z, y, x) tensor, resampled and normalised as described above\n"
        "with torch.no_grad():\n"
        "    logits = network(patch)\n"
        "    if isinstance(logits, list):  # deep supervision: full resolution first\n"
        "        logits = logits[0]\n"
        "probabilities = torch.sigmoid(logits)  # channel c is network.class_names[c]\n"
        "```\n\n"
        "To fine-tune on new classes, pass them as `classes=`: the heads of classes "
        "with the same full name are kept, and the other heads start fresh.\n\n"
        "```python\n"
        f'network = from_pretrained("{model_id}", classes=my_label_registry)\n'
        "```"
    )
