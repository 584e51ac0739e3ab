"""Content of the README.md model card written by save_pretrained."""

from huggingface_hub import ModelCard

from partialseg.hub import render_model_card, save_pretrained
from partialseg.hub.model_card import DEFAULT_TAGS, class_table_rows
from partialseg.nn import create_model

from .conftest import TINY_UNET


def card_of(network, tmp_path, **options):
    save_pretrained(network, tmp_path / "model", **options)
    return (tmp_path / "model" / "README.md").read_text()


def test_front_matter_parsed_by_hub_client(network, tmp_path):
    text = card_of(network, tmp_path, license="cc-by-4.0", tags=["liver", "ct"])

    data = ModelCard(text).data
    assert data.library_name == "partialseg"
    assert data.license == "cc-by-4.0"
    assert data.pipeline_tag == "image-segmentation"
    assert data.tags == [*DEFAULT_TAGS, "liver"]


def test_no_license_when_not_given(network, tmp_path):
    text = card_of(network, tmp_path)

    assert ModelCard(text).data.license is None
    assert "license:" not in text


def test_class_table(network, tmp_path):
    text = card_of(network, tmp_path)

    assert "| channel | class | dataset | label values |" in text
    assert "| 0 | D03/liver | D03 | 1, 2 |" in text
    assert "| 1 | D03/liver_tumor | D03 | 2 |" in text
    assert "| 2 | D09/spleen | D09 | 1 |" in text


def test_class_table_without_registry():
    rows = class_table_rows(["liver", "D03/other"], None)

    assert rows == [(0, "liver", "-", "-"), (1, "D03/other", "-", "-")]


def test_preprocessing_section(network, tmp_path):
    text = card_of(network, tmp_path)

    assert "Voxel spacing: 1.5 x 1 x 1 mm (z, y, x)" in text
    assert "Patch size: 96 x 192 x 192 voxels" in text
    assert "[-927, 275] HU" in text
    assert "(x - 63.437) / 175.481" in text


def test_preprocessing_unknown():
    network = create_model("plain_unet", classes=["a"], **TINY_UNET)

    text = render_model_card(network, model_id="org/name")

    assert "The preprocessing was not saved with this model." in text


def test_usage_examples_name_model(network):
    text = render_model_card(network, model_id="org/multitalent-tiny")

    assert "partialseg predict -m org/multitalent-tiny -i ct.nii.gz -o predictions/" in text
    assert 'from_pretrained("org/multitalent-tiny")' in text
    assert 'from_pretrained("org/multitalent-tiny", classes=my_label_registry)' in text


def test_overview_counts(network):
    text = render_model_card(network, model_id="org/name")
    parameters = sum(parameter.numel() for parameter in network.parameters())

    assert "A `plain_unet` segmentation network" in text
    assert f"3 output channels and {parameters:,} parameters" in text
