"""Image decoding and the eval-time preprocessing of a backbone's own weights config.

Decoding (bytes / path / pixel array -> resized, centre-cropped uint8 RGB) runs on CPU workers;
normalisation ((x / 255 - mean) / std) runs next to the model (on the GPU when there is one), so
the stages exchange uint8 images (4x smaller than float32). The geometry reproduces timm's eval
transform exactly: resize the shorter side to ``floor(size / crop_pct)`` with the weights'
interpolation, then centre-crop ``size`` (tests/deepclust/test_preprocess.py checks this against
``timm.data.create_transform``).
"""

from __future__ import annotations

import io
import math
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


def _resize_crop(img: Image.Image, pp: Preprocess) -> np.ndarray:
    img = img.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short = pp.resize_size
    new_long = int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _PIL_INTERP[pp.interpolation])
    size = pp.input_size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
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
        try:
            images[i] = _resize_crop(open_image(sources[i]), preprocess)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is reported per row
            errors[i] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
    return {"idx": batch["idx"], "label": batch["label"], "image": images, "error": errors}


def normalize_images(images: Any, preprocess: Preprocess) -> Any:
    """uint8 (B,H,W,3) torch tensor -> float (B,3,H,W) normalised, channels-last memory."""
    import torch

    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(preprocess.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
