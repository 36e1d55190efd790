import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from deepclust.backbones import backbone_preprocess, resolve_backbone
from deepclust.preprocess import Preprocess, decode_batch, normalize_images


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "vit_base_patch16_224.dino"])
def test_decode_and_normalize_match_timm_eval_transform(backbone):
    import timm

    pp = backbone_preprocess(backbone)
    timm_name = resolve_backbone(backbone).timm_name
    cfg = timm.data.resolve_data_config(
        pretrained_cfg=timm.models.get_pretrained_cfg(timm_name).to_dict()
    )
    reference = timm.data.create_transform(**cfg)
    img = load_sample_image("flower.jpg")
    batch = {"idx": np.array([0]), "label": np.array([0]), "pixels": img[None]}
    out = decode_batch(batch, pp)
    assert out["error"][0] == ""
    ours = normalize_images(torch.from_numpy(out["image"]), pp)[0]
    theirs = reference(Image.fromarray(img))
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_offline_backbone_uses_its_own_normalisation_not_imagenet():
    pp = backbone_preprocess("efficientnet_lite0")
    assert pp.mean == (0.5, 0.5, 0.5) and pp.std == (0.5, 0.5, 0.5)
    assert pp.interpolation == "bicubic" and pp.input_size == 224


def test_bad_rows_are_flagged_not_dropped():
    pp = Preprocess(32, 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3)
    batch = {
        "idx": np.arange(3),
        "label": np.zeros(3),
        "encoded": np.array([b"junk", b"", b"\x89PNG\r\n"], dtype=object),
    }
    out = decode_batch(batch, pp)
    assert len(out["idx"]) == 3 and all(e for e in out["error"])
    assert out["image"].shape == (3, 32, 32, 3)


def test_grayscale_pixels_become_rgb():
    pp = Preprocess(16, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3)
    batch = {"idx": np.arange(2), "label": np.zeros(2), "pixels": np.full((2, 8, 8), 200, np.uint8)}
    out = decode_batch(batch, pp)
    assert out["image"].shape == (2, 16, 16, 3) and (out["image"] == 200).all()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit greyscale PNG ramp decodes to the same ramp in 8 bits (PIL's own convert
    would clip every value above 255 to white)."""
    import io

    ramp = np.repeat(np.linspace(0, 65535, 224).astype(np.uint16)[None], 224, 0)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    pp = Preprocess(
        input_size=224, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    batch = {
        "idx": np.array([0]),
        "label": np.array([0]),
        "encoded": np.array([buf.getvalue()], dtype=object),
    }
    out = decode_batch(batch, pp)
    got = out["image"][0][..., 0].astype(int)
    expected = np.rint(ramp.astype(float) * 255 / 65535).astype(int)
    assert out["error"][0] == "" and np.abs(got - expected).max() <= 1
    assert got.mean() == pytest.approx(127.5, abs=1)  # clipping gave about 254
