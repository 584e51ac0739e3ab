import pytest
import torch

from partialseg.nn.heads import ClassHeads

NAMES = ["liver", "spleen", "aorta"]


def make_heads(*, spatial_dims=3, bias=True):
    torch.manual_seed(0)
    return ClassHeads([4, 6], NAMES, spatial_dims=spatial_dims, bias=bias)


def features(spatial_dims=3):
    torch.manual_seed(1)
    shape = (2, 2, 2) if spatial_dims == 3 else (3, 3)
    half = (1, 1, 1) if spatial_dims == 3 else (2, 2)
    return [torch.randn(2, 4, *shape), torch.randn(2, 6, *half)]


def logits_by_class(heads, feats):
    outputs = heads(feats)
    return {name: [out[:, i] for out in outputs] for i, name in enumerate(heads.class_names)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_heads_output_shapes(spatial_dims):
    heads = make_heads(spatial_dims=spatial_dims)
    feats = features(spatial_dims)
    outputs = heads(feats)
    assert len(outputs) == 2
    assert outputs[0].shape == (2, 3, *feats[0].shape[2:])
    assert outputs[1].shape == (2, 3, *feats[1].shape[2:])


def test_heads_weight_shapes():
    heads = make_heads(bias=False)
    assert heads.weight[0].shape == (3, 4, 1, 1, 1)
    assert heads.weight[1].shape == (3, 6, 1, 1, 1)
    assert heads.bias is None


def test_heads_levels_one_computes_top_only():
    heads = make_heads()
    feats = features()
    top = heads(feats[:1], levels=1)
    assert len(top) == 1
    torch.testing.assert_close(top[0], heads(feats)[0])


def test_heads_levels_out_of_range():
    heads = make_heads()
    with pytest.raises(ValueError, match="levels must be between 1 and 2"):
        heads(features(), levels=3)
    with pytest.raises(ValueError, match="only 1 feature maps"):
        heads(features()[:1])


def test_heads_classes_are_independent():
    heads = make_heads()
    feats = features()
    before = logits_by_class(heads, feats)
    with torch.no_grad():
        heads.weight[0][1].add_(1.0)
    after = logits_by_class(heads, feats)
    torch.testing.assert_close(after["liver"][0], before["liver"][0])
    torch.testing.assert_close(after["aorta"][0], before["aorta"][0])
    assert not torch.allclose(after["spleen"][0], before["spleen"][0])


def test_heads_add_classes_keeps_weights():
    heads = make_heads()
    feats = features()
    before = logits_by_class(heads, feats)
    heads.add_classes(["kidney"])
    after = logits_by_class(heads, feats)
    assert heads.class_names == [*NAMES, "kidney"]
    assert heads.weight[1].shape == (4, 6, 1, 1, 1)
    assert heads.bias[0].shape == (4,)
    for name in NAMES:
        for level in range(2):
            torch.testing.assert_close(after[name][level], before[name][level])


def test_heads_add_classes_fresh_init_bounds():
    heads = make_heads()
    heads.add_classes(["kidney"])
    bound = 1 / 6**0.5
    assert heads.weight[1][3].abs().max() <= bound
    assert heads.bias[1][3].abs().max() <= bound
    assert heads.weight[1][3].abs().max() > 0


def test_heads_add_existing_class_rejected():
    heads = make_heads()
    with pytest.raises(ValueError, match="exist already"):
        heads.add_classes(["liver"])


def test_heads_remove_classes_keeps_weights():
    heads = make_heads()
    feats = features()
    before = logits_by_class(heads, feats)
    heads.remove_classes(["spleen"])
    after = logits_by_class(heads, feats)
    assert heads.class_names == ["liver", "aorta"]
    assert heads.weight[0].shape == (2, 4, 1, 1, 1)
    for name in ["liver", "aorta"]:
        for level in range(2):
            torch.testing.assert_close(after[name][level], before[name][level])


def test_heads_remove_all_rejected():
    heads = make_heads()
    with pytest.raises(ValueError, match="at least one class"):
        heads.remove_classes(NAMES)


def test_heads_reorder_keeps_weights():
    heads = make_heads()
    feats = features()
    before = logits_by_class(heads, feats)
    heads.reorder(["aorta", "liver", "spleen"])
    after = logits_by_class(heads, feats)
    assert heads.class_names == ["aorta", "liver", "spleen"]
    for name in NAMES:
        for level in range(2):
            torch.testing.assert_close(after[name][level], before[name][level])


def test_heads_reorder_needs_every_class():
    heads = make_heads()
    with pytest.raises(ValueError, match="missing"):
        heads.reorder(["aorta", "liver"])


def test_heads_select_matches_full_output():
    heads = make_heads()
    feats = features()
    full = logits_by_class(heads, feats)
    view = heads.select(["aorta", "liver"])
    outputs = view(feats)
    assert view.class_names == ["aorta", "liver"]
    assert outputs[0].shape[1] == 2
    for level in range(2):
        torch.testing.assert_close(outputs[level][:, 0], full["aorta"][level])
        torch.testing.assert_close(outputs[level][:, 1], full["liver"][level])


def test_heads_select_shares_parameters():
    heads = make_heads()
    view = heads.select(["spleen"])
    view(features())[0].sum().backward()
    grad = heads.weight[0].grad
    assert grad[1].abs().sum() > 0
    assert grad[0].abs().sum() == 0
    assert grad[2].abs().sum() == 0


def test_heads_select_levels_one():
    heads = make_heads()
    outputs = heads.select(["spleen"])(features(), levels=1)
    assert len(outputs) == 1


@pytest.mark.parametrize("method", ["remove_classes", "select", "reorder"])
def test_heads_unknown_name_suggests(method):
    heads = make_heads()
    with pytest.raises(ValueError, match=r"unknown class name 'livr'; did you mean 'liver'\?"):
        getattr(heads, method)(["livr"])


def test_heads_duplicate_names_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        ClassHeads([4], ["liver", "liver"])


def test_heads_string_names_rejected():
    heads = make_heads()
    with pytest.raises(TypeError, match="got the string"):
        heads.add_classes("kidney")


def test_heads_state_dict_round_trip():
    heads = make_heads()
    heads.add_classes(["kidney"])
    copy = ClassHeads([4, 6], heads.class_names, bias=True)
    copy.load_state_dict(heads.state_dict())
    torch.testing.assert_close(copy(features())[1], heads(features())[1])


def test_heads_single_tensor_rejected():
    heads = make_heads()
    with pytest.raises(TypeError, match="list of feature maps"):
        heads(features()[0])
