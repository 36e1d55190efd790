"""Image decoding and the eval-time preprocessing of a backbone's own weights config.

Decoding (bytes / path / pixel array -> resized, centre-cropped uint8 RGB) runs on CPU workers;
normalisation ((x / 255 - mean) / std) runs next to the model (on the GPU when there is one), so
the stages exchange uint8 images (4x smaller than float32). The geometry reproduces timm's eval
transform exactly: resize the shorter side to ``floor(size / crop_pct)`` with the weights'
interpolation, then centre-crop ``size`` (tests/deepclust/test_preprocess.py checks this against
``timm.data.create_transform``). :mod:`deepclust.gpu_decode` runs the same geometry on the
model's device for JPEG bytes.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

_PIL_INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

_BYTESIO_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

# Source columns an image batch can carry; exactly one is present.
SOURCE_COLUMNS = ("pixels", "encoded", "path")


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing taken from a backbone's pretrained config."""

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_timm_cfg(cls, cfg: Any) -> Preprocess:
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        size = get("input_size")[-1]
        return cls(
            input_size=int(size),
            crop_pct=float(get("crop_pct") or 1.0),
            interpolation=str(get("interpolation") or "bicubic"),
            mean=tuple(float(m) for m in get("mean")),
            std=tuple(float(s) for s in get("std")),
        )

    @property
    def resize_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)


def resize_geometry(width: int, height: int, pp: Preprocess) -> tuple[int, int, int, int]:
    """timm eval geometry of one ``width`` x ``height`` image: ``(new_w, new_h, left, top)``.

    The shorter side becomes ``pp.resize_size`` and the longer one keeps the aspect ratio,
    truncated to an int (torchvision's ``Resize(int)``, which timm's eval transform uses); then
    the ``input_size`` square at ``(left, top)`` is cropped. Shared by the PIL path and the device path
    (:mod:`deepclust.gpu_decode`) so both cut exactly the same pixels.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short = pp.resize_size
    new_long = int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    size = pp.input_size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return new_w, new_h, left, top


def to_8bit(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit greyscale (PIL modes I;16*, and I holding values above 255) is
    scaled by 255 / 65535 and float images (mode F) in [0, 1] by 255, instead of PIL's
    convert, which clips them to 0 / 255."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def _resize_crop(img: Image.Image, pp: Preprocess) -> np.ndarray:
    img = to_8bit(img)
    w, h = img.size
    new_w, new_h, left, top = resize_geometry(w, h, pp)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _PIL_INTERP[pp.interpolation])
    size = pp.input_size
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def open_image(source: Any) -> Image.Image:
    """PIL image from encoded bytes, a file path, or a uint8 (H,W[,3]) array."""
    if isinstance(source, bytes | bytearray | memoryview):
        img = Image.open(io.BytesIO(bytes(source)))
    elif isinstance(source, str):
        img = Image.open(source)
    else:
        arr = np.asarray(source)
        if arr.dtype != np.uint8:
            raise ValueError(f"pixel arrays must be uint8, got {arr.dtype}")
        img = Image.fromarray(arr)
    img.load()  # force the decode here so a truncated file fails now, not later
    return img


def error_text(exc: BaseException) -> str:
    """The one-line, at most 200-character reason stored in a batch's ``error`` column.

    PIL names in-memory files by their address (``<_io.BytesIO object at 0x7f..>``); that part
    becomes ``<encoded bytes>`` so the same bad image gives the same text on every run.
    """
    text = _BYTESIO_REPR.sub("<encoded bytes>", f"{type(exc).__name__}: {exc}")
    return text.replace("\n", " ")[:200]


def decode_one(source: Any, preprocess: Preprocess) -> tuple[np.ndarray | None, str]:
    """One source -> ``((S, S, 3) uint8, "")``, or ``(None, reason)`` when it cannot be read."""
    try:
        return _resize_crop(open_image(source), preprocess), ""
    except Exception as exc:  # noqa: BLE001 - any decoder failure is reported per row
        return None, error_text(exc)


def decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Decode one batch of image sources to resized, cropped uint8 images.

    Args:
        batch: ``idx`` (B,), ``label`` (B,) and one source column of :data:`SOURCE_COLUMNS`.
        preprocess: geometry from the backbone's weights config.

    Returns:
        ``idx`` (B,), ``label`` (B,), ``image`` (B, S, S, 3) uint8 and ``error`` (B,) str: empty
        when the image decoded, else the reason. Unreadable images become zeros and are reported
        by the caller with their index and source; they are never silently dropped.
    """
    col = next(c for c in SOURCE_COLUMNS if c in batch)
    sources = batch[col]
    n = len(batch["idx"])
    size = preprocess.input_size
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    errors = np.full(n, "", dtype=object)
    for i in range(n):
        image, errors[i] = decode_one(sources[i], preprocess)
        if image is not None:
            images[i] = image
    return {"idx": batch["idx"], "label": batch["label"], "image": images, "error": errors}


def normalization_stats(preprocess: Preprocess, device: Any = "cpu") -> tuple[Any, Any]:
    """The weights' ``(mean, std)`` as (1, 3, 1, 1) float32 tensors on ``device``.

    Built once by a caller that normalises many batches on a GPU: making them per batch
    (``torch.tensor(..., device="cuda")``) is a pageable host-to-device copy that waits for the
    whole stream, which would stall a pipelined embedder behind the previous forward pass.
    """
    import torch

    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    return mean, std


def normalize_images(
    images: Any, preprocess: Preprocess, stats: tuple[Any, Any] | None = None
) -> Any:
    """uint8 (B,H,W,3) torch tensor -> float (B,3,H,W) normalised, channels-last memory.

    ``stats``: :func:`normalization_stats` on the images' device, to reuse across batches.
    """
    import torch

    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = stats if stats is not None else normalization_stats(preprocess, x.device)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
