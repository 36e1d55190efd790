"""JPEG bytes -> resized, centre-cropped uint8 images on the model's device.

``torchvision.io.decode_jpeg(list_of_tensors, device="cuda")`` decodes a whole batch with nvJPEG
(the A100/H100 hardware JPEG engines for baseline JPEGs), then the timm eval geometry of
:mod:`deepclust.preprocess` (shorter side to ``resize_size`` with the weights' interpolation,
centre crop) runs as torch ops on the same device. With ``device="cpu"`` the very same code runs
with libjpeg-turbo, which is how the tests check it against the PIL path.

Anything this path cannot reproduce exactly goes through the PIL path of
:func:`deepclust.preprocess.decode_one`, row by row, so an unreadable image gets the same error
string as :func:`deepclust.preprocess.decode_batch` and a zero image, never a silent drop:
non-JPEG sources (PNG, pixel arrays, unreadable paths), JPEGs without an end-of-image marker (PIL
refuses truncated files; nvJPEG may decode them without an error), 12-bit, lossless, arithmetic-
coded, CMYK/YCCK and RGB-coded (Adobe transform 0) JPEGs (converted differently, or not at all),
any JPEG the device decoder rejects, and every image when the interpolation has no torch
equivalent (lanczos). Decoded JPEGs ignore EXIF orientation, like the PIL path.

Stream safety: torchvision 0.29 allocates the decoded tensors on the caller's current CUDA stream
but writes them from a private stream that does not wait for it (pytorch/vision#9606, not
merged), so a block the caching allocator just recycled can be overwritten while queued kernels
still read it. The decode therefore runs with a dedicated stream current, on which nothing else
is ever allocated or queued; each decoded tensor is ``record_stream``-ed on the consuming stream,
so its block returns to that pool only after the consumers ran. The forward pass of the previous
batch can thus keep running while the next batch decodes.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepclust.preprocess import SOURCE_COLUMNS, Preprocess, decode_one, resize_geometry

# PIL resampling name -> torch interpolate mode. torch's antialiased kernels are PIL's own
# (Pillow's Resample.c filters, bicubic a = -0.5); see _resize_pass for the remaining deviation.
# "nearest" gathers the source pixels Pillow picks (_pil_nearest_index).
_TORCH_INTERP = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


@functools.lru_cache(maxsize=1024)
def _pil_nearest_index(size_in: int, size_out: int) -> torch.Tensor:
    """Source pixel of each output pixel in Pillow's nearest resize (ImagingScaleAffine).

    Pillow accumulates ``in / out`` in a double and truncates, so exact ties land where the
    rounding of that sum puts them (640 -> 95: column 28 reads 191, not the exact 192 that
    torch's "nearest-exact" reads); repeating the same float64 sum gives the same pixels.
    """
    scale = size_in / size_out
    index, pos = [], 0.0 + scale * 0.5
    for _ in range(size_out):
        index.append(min(int(pos), size_in - 1))
        pos += scale
    return torch.tensor(index, dtype=torch.int64)


# Frame types libjpeg-turbo and nvJPEG both decode like PIL: baseline, extended sequential and
# progressive Huffman. Everything else (lossless, arithmetic coding, hierarchical) goes to PIL.
_SOF_DEVICE = {0xC0, 0xC1, 0xC2}
_SOF_ALL = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames

_DECODE_STREAMS: dict[int, torch.cuda.Stream] = {}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of a JPEG the device path decodes exactly like PIL, else ``None``.

    Reads the marker segments up to the first scan (a few microseconds): 8-bit baseline or
    progressive Huffman frames with 1 (grey) or 3 YCbCr components, ending with an EOI marker.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    if not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        return None  # truncated: PIL raises "image file is truncated", nvJPEG would not
    i, adobe_transform, frame = 2, -1, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return None
        seg = data[i + 4 : i + 2 + length]
        if marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe_transform = seg[11]
        elif marker in _SOF_ALL:
            if marker not in _SOF_DEVICE or frame is not None or len(seg) < 6:
                return None
            precision, nf = seg[0], seg[5]
            height = int.from_bytes(seg[1:3], "big")
            width = int.from_bytes(seg[3:5], "big")
            if precision != 8 or height == 0 or width == 0 or nf not in (1, 3):
                return None
            ids = bytes(seg[6 + 3 * k] for k in range(nf) if 6 + 3 * k < len(seg))
            frame = (height, width, nf, ids)
        elif marker == 0xDA:  # start of scan: every header marker has been seen
            break
        i += 2 + length
    if frame is None:
        return None
    height, width, nf, ids = frame
    if nf == 3 and (adobe_transform == 0 or ids == b"RGB"):
        return None  # RGB-coded (not YCbCr) JPEG: libjpeg detects it, nvJPEG may not
    return height, width


def _encoded_bytes(source: Any) -> bytes | None:
    """The raw bytes of an encoded source or a readable path; ``None`` for anything else."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str):
        try:
            return Path(source).read_bytes()
        except OSError:
            return None  # the PIL path reports it with decode_batch's exact message
    return None


def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DECODE_STREAMS:
        _DECODE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _DECODE_STREAMS[index]


def _to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> ``device`` without waiting for the stream (a pageable copy would)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _decode_jpegs(data: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Encoded JPEGs -> (3, H, W) uint8 tensors on ``device`` (``None`` where decoding failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not data:
        return []
    buf = torch.frombuffer(bytearray().join(data), dtype=torch.uint8)  # one copy, then views
    ends = np.cumsum([len(d) for d in data]).tolist()
    encoded = [buf[e - len(d) : e] for d, e in zip(data, ends, strict=True)]
    cuda = device.type == "cuda"
    stream = _decode_stream(device) if cuda else None
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx:
        try:  # one batched call (nvJPEG batched decode on CUDA)
            images: list[torch.Tensor | None] = list(
                decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            )
        except Exception:  # noqa: BLE001 - the batch call fails whole: find the bad rows
            images = []
            for e in encoded:
                try:
                    images.append(decode_jpeg([e], mode=ImageReadMode.RGB, device=device)[0])
                except Exception:  # noqa: BLE001 - this row goes to the PIL path
                    images.append(None)
    if stream is not None:
        consumer = torch.cuda.current_stream(device)
        consumer.wait_stream(stream)
        for img in images:
            if img is not None:
                img.record_stream(consumer)
    return images


def _crop(y: torch.Tensor, start: int, size: int, dim: int) -> torch.Tensor:
    """``size`` entries of ``dim`` from ``start``, zero-padded outside (what PIL's crop does)."""
    length = y.shape[dim]
    before, after = max(0, -start), max(0, start + size - length)
    if before or after:
        pad = [0, 0] * (y.dim() - 1 - dim % y.dim()) + [before, after]
        y = F.pad(y, pad)
        start += before
    return y.narrow(dim, start, size)


def _resize_pass(y: torch.Tensor, dim: int, length: int, mode: str) -> torch.Tensor:
    """Resize float (G, 3, H, W) ``y`` along ``dim`` (2: rows, 3: columns) to ``length``."""
    if mode == "nearest":
        src = _to_device_async(_pil_nearest_index(y.shape[dim], length), y.device)
        return y.index_select(dim, src)
    size = (length, y.shape[3]) if dim == 2 else (y.shape[2], length)
    # deviation: PIL resizes uint8 images with fixed-point (22-bit) weights, rounding to uint8
    # after the horizontal pass and again after the vertical one; torch runs the same filters
    # in float32. Doing the two passes separately with PIL's rounding (half up, clipped) between
    # them leaves at most 1-2 grey levels of difference on <0.01% (bicubic) / <0.5% (bilinear)
    # of the values (tests/deepclust/test_gpu_decode.py). torch's bicubic *without* antialias
    # uses a = -0.75 (OpenCV's) instead of PIL's a = -0.5 and is up to 15 levels off when
    # upsampling CIFAR-10, so antialias=True is used for upsampling too (it is PIL's kernel).
    out = F.interpolate(y, size=size, mode=mode, antialias=True)
    return torch.floor(out + 0.5).clamp_(0.0, 255.0)


def resize_crop(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Same-size images -> the timm eval geometry, on their device.

    Args:
        images: (G, 3, H, W) uint8, all of one size.
        preprocess: geometry and interpolation of the backbone's weights.

    Returns:
        (G, S, S, 3) uint8 with ``S = preprocess.input_size``, as PIL's resize + crop would cut.
    """
    h, w = images.shape[-2:]
    new_w, new_h, left, top = resize_geometry(w, h, preprocess)
    size = preprocess.input_size
    mode = _TORCH_INTERP[preprocess.interpolation]
    y = images.float()
    if new_w != w:  # horizontal pass first, like PIL; columns outside the crop are dropped now
        y = _resize_pass(y, 3, new_w, mode)
    y = _crop(y, left, size, dim=3)
    if new_h != h:
        y = _resize_pass(y, 2, new_h, mode)
    y = _crop(y, top, size, dim=2)
    return y.to(torch.uint8).permute(0, 2, 3, 1)


def _groups(rows: list[int], shapes: list[tuple[int, int]]) -> Iterator[list[int]]:
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row, shape in zip(rows, shapes, strict=True):
        by_shape[shape].append(row)
    return iter(by_shape.values())


def decode_on_device(
    sources: Sequence[Any], preprocess: Preprocess, device: torch.device | str
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode a batch of image sources on ``device`` with the exact timm eval geometry.

    Args:
        sources: (B,) encoded image bytes (JPEGs decode on the device) or anything
            :func:`deepclust.preprocess.open_image` reads (decoded by PIL on the host).
        preprocess: geometry from the backbone's weights config.
        device: ``cuda[:i]`` (nvJPEG) or ``cpu`` (libjpeg-turbo; same code, for tests).

    Returns:
        ``(images, errors)``: (B, S, S, 3) uint8 on ``device`` and (B,) object ``str``, empty
        when the row decoded, else the reason (that row's image is zeros), exactly as
        :func:`deepclust.preprocess.decode_batch` reports it.
    """
    device = torch.device(device)
    n, size = len(sources), preprocess.input_size
    errors = np.full(n, "", dtype=object)
    jpeg_rows: list[int] = []
    jpeg_data: list[bytes] = []
    if preprocess.interpolation in _TORCH_INTERP:
        for i, source in enumerate(sources):
            data = _encoded_bytes(source)
            if data is not None and jpeg_size(data) is not None:
                jpeg_rows.append(i)
                jpeg_data.append(data)
    decoded = _decode_jpegs(jpeg_data, device)
    ok = [(row, img) for row, img in zip(jpeg_rows, decoded, strict=True) if img is not None]
    host_rows = sorted(set(range(n)) - {row for row, _ in ok})
    pieces: list[tuple[list[int], torch.Tensor]] = []
    image_of = dict(ok)
    for rows in _groups([r for r, _ in ok], [tuple(img.shape[-2:]) for _, img in ok]):
        pieces.append((rows, resize_crop(torch.stack([image_of[r] for r in rows]), preprocess)))
    host_images = np.zeros((len(host_rows), size, size, 3), dtype=np.uint8)
    for k, row in enumerate(host_rows):
        image, errors[row] = decode_one(sources[row], preprocess)
        if image is not None:
            host_images[k] = image
    if host_rows:
        pieces.append((host_rows, _to_device_async(torch.from_numpy(host_images), device)))
    if len(pieces) == 1 and pieces[0][0] == list(range(n)):
        return pieces[0][1].contiguous(), errors  # the usual case: one size, all on device
    out = torch.zeros((n, size, size, 3), dtype=torch.uint8, device=device)
    for rows, images in pieces:
        index = _to_device_async(torch.tensor(rows, dtype=torch.int64), device)
        out.index_copy_(0, index, images)
    return out, errors


def decode_batch_on_device(
    batch: dict[str, Any], preprocess: Preprocess, device: torch.device | str
) -> dict[str, Any]:
    """:func:`deepclust.preprocess.decode_batch` with the decode on ``device``.

    Args:
        batch: ``idx`` (B,), ``label`` (B,) and one source column of ``SOURCE_COLUMNS``
            (``encoded`` JPEG bytes are what this path speeds up).
        preprocess: geometry from the backbone's weights config.
        device: where the images are decoded and returned.

    Returns:
        ``idx``, ``label``, ``image`` (B, S, S, 3) uint8 torch tensor on ``device`` and
        ``error`` (B,) str, as :func:`deepclust.preprocess.decode_batch`.
    """
    col = next((c for c in SOURCE_COLUMNS if c in batch), None)
    if col is None:
        raise ValueError(f"batch has none of the image columns {SOURCE_COLUMNS}: {sorted(batch)}")
    images, errors = decode_on_device(batch[col], preprocess, device)
    return {"idx": batch["idx"], "label": batch["label"], "image": images, "error": errors}
