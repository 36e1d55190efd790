import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image

from deepclust.backbones import (
    BACKBONES,
    _lite0_checkpoint,
    build_backbone,
    map_state_dict_by_position,
    resolve_backbone,
)
from deepclust.embedder import Embedder
from deepclust.errors import UserError
from deepclust.preprocess import decode_batch, normalize_images

DAISY = 985  # ImageNet-1k class index of "daisy"


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


def test_every_checkpoint_tensor_lands_on_its_matching_parameter(lite0):
    model, _ = lite0
    source = torch.load(_lite0_checkpoint(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    assert len(source) == len(target) == 296
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items(), strict=True):
        assert torch.equal(sval, tval), f"{skey} did not land on {tkey}"
    # spot-check a few name pairs that must correspond
    pairs = dict(zip(source, target, strict=True))
    assert pairs["_conv_stem.weight"] == "conv_stem.weight"
    assert pairs["_fc.weight"] == "classifier.weight"
    assert pairs["_bn1.running_var"] == "bn2.running_var"


def test_position_mapping_rejects_a_shifted_checkpoint():
    target = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3), "b.weight": torch.zeros(3)}
    shifted = {"x.bias": torch.zeros(3), "x.weight": torch.zeros(3, 2), "y.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="position mismatch"):
        map_state_dict_by_position(shifted, target)
    with pytest.raises(ValueError, match="296|tensors"):
        map_state_dict_by_position({"a.weight": torch.zeros(3, 2)}, target)


def test_imagenet_classifier_recognises_a_daisy(lite0):
    model, pp = lite0
    img = load_sample_image("flower.jpg")
    out = decode_batch({"idx": np.array([0]), "label": np.array([0]), "pixels": img[None]}, pp)
    with torch.inference_mode():
        logits = model(normalize_images(torch.from_numpy(out["image"]), pp))
    assert int(logits.argmax()) == DAISY


def test_embedder_features_are_unit_norm_and_deterministic():
    emb = Embedder("efficientnet_lite0", num_threads=2)
    images = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    out = emb(
        {
            "idx": np.arange(3),
            "label": np.zeros(3),
            "image": images,
            "error": np.array(["", "", ""], dtype=object),
        }
    )
    feats = out["embedding"]
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(feats, emb.embed_images(images))


def test_registry_and_timm_names_resolve():
    assert "efficientnet_lite0" in BACKBONES
    assert resolve_backbone("vit_base_patch16_224.dino").timm_name == "vit_base_patch16_224.dino"


@pytest.mark.parametrize("name", ["efficientnet_lite9", "vit_base_patch16_224.nosuchtag"])
def test_unknown_backbone_lists_valid_names(name):
    with pytest.raises(UserError, match="unknown backbone .*valid: efficientnet_lite0"):
        resolve_backbone(name)


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("vit_tiny_patch16_224.augreg_in21k", weights_file=str(tmp_path / "w.pth"))


def test_timm_backbone_from_a_local_weights_file(tmp_path):
    import timm

    ref = timm.create_model("resnet18.a1_in1k", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model, pp = build_backbone("resnet18.a1_in1k", weights_file=str(tmp_path / "r18.pth"))
    for a, b in zip(ref.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert pp.input_size == 224
