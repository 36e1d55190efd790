"""deepclust.gpu_decode on CPU (the same code that runs on CUDA): geometry and pixels match the
PIL path of deepclust.preprocess, unreadable rows keep decode_batch's exact error strings."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from deepclust.gpu_decode import decode_batch_on_device, decode_on_device, jpeg_size
from deepclust.preprocess import Preprocess, decode_batch

# Measured on this path vs PIL (CIFAR-10 test JPEGs; sklearn photos from 24 px to 700 px, both
# orientations): at most 1 grey level, on under 0.01% of the values for bicubic and nearest and
# about 0.3% for bilinear (more rounding ties); the bounds below leave a little room.
MAX_DIFF = 2
MEAN_DIFF = {"bicubic": 1e-3, "nearest": 1e-3, "bilinear": 5e-3, "lanczos": 0.0}


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Landscape, portrait, square, tiny (upsampled) and large (downsampled) photos."""
    flower = Image.fromarray(load_sample_image("flower.jpg"))  # 640 x 427
    china = Image.fromarray(load_sample_image("china.jpg"))
    return [
        flower,
        china.transpose(Image.Transpose.ROTATE_90),  # portrait
        flower.crop((100, 50, 332, 282)),  # square 232
        china.resize((32, 32), Image.Resampling.BOX),  # CIFAR-sized
        flower.resize((41, 24), Image.Resampling.BOX),
        china.resize((700, 500), Image.Resampling.BICUBIC),
    ]


def _batch(sources: list) -> dict:
    return {
        "idx": np.arange(len(sources)),
        "label": np.zeros(len(sources), dtype=np.int64),
        "encoded": np.array(sources + [None], dtype=object)[:-1],  # keep a 1-D object array
    }


def _compare(batch: dict, pp: Preprocess) -> tuple[dict, dict]:
    ref = decode_batch(batch, pp)
    dev = decode_batch_on_device(batch, pp, "cpu")
    assert isinstance(dev["image"], torch.Tensor) and dev["image"].dtype == torch.uint8
    assert dev["image"].shape == ref["image"].shape
    assert list(dev["error"]) == list(ref["error"])
    diff = np.abs(dev["image"].numpy().astype(int) - ref["image"].astype(int))
    assert diff.max() <= MAX_DIFF, diff.max()
    assert diff.mean() <= MEAN_DIFF[pp.interpolation], diff.mean()
    return ref, dev


@pytest.mark.parametrize(
    "pp",
    [
        Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3),  # EfficientNet-Lite0
        Preprocess(224, 0.9, "bicubic", (0.5,) * 3, (0.5,) * 3),  # ViT-B/16
        Preprocess(224, 0.95, "bilinear", (0.5,) * 3, (0.5,) * 3),
        Preprocess(64, 1.0, "nearest", (0.5,) * 3, (0.5,) * 3),
        Preprocess(32, 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3),  # CIFAR size: no resize
        Preprocess(64, 1.25, "bicubic", (0.5,) * 3, (0.5,) * 3),  # crop larger than the resize
    ],
    ids=["lite0", "vit", "bilinear", "nearest", "noresize", "pad"],
)
def test_device_decode_matches_the_pil_geometry_and_pixels(photos, pp):
    sources = [_jpeg(p, quality=90) for p in photos]
    sources += [_jpeg(photos[0], quality=75, subsampling=0), _jpeg(photos[1], progressive=True)]
    ref, _ = _compare(_batch(sources), pp)
    assert all(e == "" for e in ref["error"])


def test_grayscale_and_cmyk_jpegs_decode_like_pil(photos):
    pp = Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    gray = _jpeg(photos[0].convert("L"))
    cmyk = _jpeg(photos[2].convert("CMYK"))
    assert jpeg_size(gray) == (427, 640)
    assert jpeg_size(cmyk) is None  # CMYK goes to PIL: nvJPEG and PIL convert it differently
    _, dev = _compare(_batch([gray, cmyk]), pp)
    img = dev["image"].numpy()
    assert (img[0, ..., 0] == img[0, ..., 2]).all()  # grey replicated to RGB


def test_unreadable_rows_keep_decode_batch_errors_and_zero_images(photos):
    pp = Preprocess(32, 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3)
    good = _jpeg(photos[3])
    truncated = _jpeg(photos[0])[:2000]
    # parses as a JPEG (frame, scan, end marker) but has no tables: the device decoder rejects
    # it, so the whole batched call fails and every row is retried one by one
    sof = bytes.fromhex("ffc00011080008000803012200021101031101")
    sos = bytes.fromhex("ffda000c03010002110311003f00")
    no_tables = b"\xff\xd8" + sof + sos + bytes(16) + b"\xff\xd9"
    assert jpeg_size(no_tables) == (8, 8) and jpeg_size(truncated) is None
    sources = [good, b"junk", truncated, b"", no_tables, good]
    ref, dev = _compare(_batch(sources), pp)
    errors = list(dev["error"])
    assert errors[0] == errors[5] == "" and all(errors[1:5])
    assert "truncated" in errors[2] and "broken data stream" in errors[4]
    assert (dev["image"][1:5] == 0).all() and (dev["image"][0] > 0).any()
    assert len(dev["idx"]) == len(sources)


def test_mixed_png_jpeg_pixels_and_paths_fall_back_per_row(photos, tmp_path):
    pp = Preprocess(48, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    on_disk = tmp_path / "a.jpg"
    on_disk.write_bytes(_jpeg(photos[1]))
    sources = [_png(photos[0]), _jpeg(photos[0]), _png(photos[3]), _jpeg(photos[4])]
    _compare(_batch(sources), pp)
    paths = [str(on_disk), str(tmp_path / "missing.jpg"), str(on_disk)]
    ref = decode_batch({"idx": np.arange(3), "label": np.zeros(3), "path": paths}, pp)
    dev = decode_batch_on_device(
        {"idx": np.arange(3), "label": np.zeros(3), "path": paths}, pp, "cpu"
    )
    assert list(dev["error"]) == list(ref["error"]) and "missing.jpg" in ref["error"][1]
    diff = np.abs(dev["image"].numpy().astype(int) - ref["image"].astype(int))
    assert diff.max() <= MAX_DIFF
    pixels = np.stack([np.asarray(photos[3]), np.asarray(photos[3])])
    images, errors = decode_on_device(pixels, pp, "cpu")
    np.testing.assert_array_equal(
        images.numpy(),
        decode_batch({"idx": np.arange(2), "label": np.zeros(2), "pixels": pixels}, pp)["image"],
    )


def test_interpolation_without_a_torch_kernel_uses_pil_for_every_row(photos):
    pp = Preprocess(40, 0.875, "lanczos", (0.5,) * 3, (0.5,) * 3)
    batch = _batch([_jpeg(p) for p in photos[:3]])
    np.testing.assert_array_equal(
        decode_batch_on_device(batch, pp, "cpu")["image"].numpy(), decode_batch(batch, pp)["image"]
    )


def test_jpeg_size_reads_only_what_the_device_decodes_like_pil(photos):
    rgb = _jpeg(photos[0])
    assert jpeg_size(rgb) == (427, 640)
    assert jpeg_size(_jpeg(photos[0], progressive=True)) == (427, 640)
    assert jpeg_size(rgb + b"\x00\x00\n") == (427, 640)  # padding after the end marker
    assert jpeg_size(_png(photos[0])) is None
    assert jpeg_size(rgb[:-2]) is None  # no end marker: PIL calls it truncated
    assert jpeg_size(b"\xff\xd8\xff\xd9") is None  # no frame header
    # RGB-coded (Adobe transform 0) JPEG: PIL honours the transform, nvJPEG may not
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    assert jpeg_size(rgb[:2] + adobe + rgb[2:]) is None


def test_no_batch_and_a_missing_source_column():
    pp = Preprocess(16, 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3)
    images, errors = decode_on_device([], pp, "cpu")
    assert images.shape == (0, 16, 16, 3) and errors.shape == (0,)
    with pytest.raises(ValueError, match="none of the image columns"):
        decode_batch_on_device({"idx": np.arange(1), "label": np.zeros(1)}, pp, "cpu")
