"""The embedding callable: images (decoded, or JPEG bytes) -> L2-normalised backbone features.

The same class runs inside Ray Data's actor pool (``orchestrator/embed.py``: built once per
actor, called per batch) and on its own (``bench/embed.py``, tests). It holds no Ray state.

On CUDA the forward pass runs under bf16 autocast with channels-last activations; uint8 batches
go host -> device from pinned memory without blocking, and features come back through a pinned
buffer and an event, so :meth:`Embedder.embed_stream` can prepare batch ``i + 1`` (decode on the
device, or the copy of a CPU-decoded batch) while batch ``i``'s forward pass runs. On CPU
everything is synchronous, fp32 and bit-identical to :meth:`Embedder.embed_images`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepclust.backbones import build_backbone
from deepclust.gpu_decode import decode_batch_on_device
from deepclust.preprocess import decode_batch, normalization_stats, normalize_images

# Rows per forward pass on CPU. A convnet's activations for 16 images at 224 px stay in a
# core's cache where 64 images' do not: on the 2-core test machine EfficientNet-Lite0 embeds
# about 1.5x as many images a second in chunks of 16 as in one call per batch (bench/embed.py:
# serial mode against the one-call bare forward, same run). A batch is cut into chunks of 16
# to 31 rows, never fewer: from 16 rows on, oneDNN's kernels give features bit-identical to
# one call over the whole batch there, where smaller calls differ in the 7th digit.
CPU_CHUNK = 16


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class _Pending:
    """One launched batch: its row metadata and (B, D) features, ready once ``event`` is."""

    idx: np.ndarray
    label: np.ndarray
    error: np.ndarray
    features: torch.Tensor  # host; pinned and still being written on CUDA until ``event``
    event: torch.cuda.Event | None


class Embedder:
    """Frozen backbone features for batches of images.

    Args:
        backbone: registered or timm name.
        weights_file: optional local weights for timm backbones.
        pretrained: False for random weights (speed benchmarks).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``.
        num_threads: CPU threads for torch (Ray sets OMP threads to the actor's CPU reservation,
            which starves a CPU-only embedder; the orchestrator passes the real budget).
        decode_on_device: batches that carry an image source column instead of ``image``
            (``encoded`` JPEG bytes above all) are decoded on this embedder's device with
            :func:`deepclust.gpu_decode.decode_batch_on_device` (nvJPEG on CUDA); False decodes
            them on the host with :func:`deepclust.preprocess.decode_batch`. Batches that
            already carry ``image`` are embedded as they are either way.
    """

    def __init__(
        self,
        backbone: str,
        weights_file: str | None = None,
        pretrained: bool = True,
        device: str = "auto",
        num_threads: int | None = None,
        decode_on_device: bool = False,
    ) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        model, self.preprocess = build_backbone(backbone, weights_file, pretrained)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        # bf16 autocast on GPU (speed; features are L2-normalised in fp32 afterwards);
        # fp32 on CPU where bf16 kernels are slower than fp32 on most server CPUs.
        self.autocast = self.device.type == "cuda"
        self.decode_on_device = decode_on_device
        # made once: building them per batch on CUDA is a copy that waits for the stream
        self._stats = normalization_stats(self.preprocess, self.device)

    def _to_device(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 array/tensor -> the same on this device (async from pinned memory)."""
        if isinstance(images, torch.Tensor):
            x = images
        else:
            # torch warns on (and must not write to) a read-only array, as Arrow-backed
            # batches are: those are copied, a writable contiguous one is used as is
            x = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        if self.device.type != "cuda" or x.device.type != "cpu":
            return x.to(self.device)
        if not x.is_pinned():
            x = x.pin_memory()  # a pageable copy would block the host until the stream is idle
        return x.to(self.device, non_blocking=True)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 on this device -> (B, D) float32 unit-norm features, same device."""
        x = normalize_images(images, self.preprocess, self._stats)
        # CPU: the forward pass runs on chunks of CPU_CHUNK to 2 * CPU_CHUNK - 1 rows
        parts = 1 if self.device.type == "cuda" else max(1, len(x) // CPU_CHUNK)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            feats = torch.cat(
                [
                    self.model.forward_head(self.model.forward_features(part), pre_logits=True)
                    for part in x.tensor_split(parts)
                ]
            )
        return torch.nn.functional.normalize(feats.float().flatten(1), dim=1)

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 (numpy, host tensor or tensor on this device) -> (B, D) float32
        unit-norm features."""
        return self._features(self._to_device(images)).cpu().numpy()

    def decode(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch with a source column -> ``idx``, ``label``, ``image`` (B, S, S, 3) uint8,
        ``error``: decoded on this device when ``decode_on_device``, else on the host."""
        if self.decode_on_device:
            return decode_batch_on_device(batch, self.preprocess, self.device)
        return decode_batch(batch, self.preprocess)

    @torch.inference_mode()
    def _launch(self, batch: dict[str, Any]) -> _Pending:
        """Decode if needed and queue the forward pass; on CUDA this returns before it ends."""
        if "image" not in batch:
            batch = self.decode(batch)
        feats = self._features(self._to_device(batch["image"]))
        event = None
        if self.device.type == "cuda":
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            feats = host
        return _Pending(
            idx=np.asarray(batch["idx"], dtype=np.int64),
            label=np.asarray(batch["label"], dtype=np.int64),
            error=np.asarray(batch["error"], dtype=object).astype(str),
            features=feats,
            event=event,
        )

    @staticmethod
    def _finish(pending: _Pending) -> dict[str, np.ndarray]:
        if pending.event is None:
            embedding = pending.features.numpy()
        else:
            pending.event.synchronize()
            embedding = pending.features.numpy().copy()  # don't hand pinned pages to callers
        return {
            "idx": pending.idx,
            "label": pending.label,
            "error": pending.error,
            "embedding": embedding,
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Ray Data batch -> ``idx``, ``label``, ``error``, ``embedding`` (B, D) float32.

        The batch carries ``idx``, ``label`` and either decoded images (``image`` (B, S, S, 3)
        uint8 and ``error``, from :func:`deepclust.preprocess.decode_batch`) or one raw source
        column (``encoded`` / ``path`` / ``pixels``), decoded here (see ``decode_on_device``).
        Rows that failed to decode keep their error string and embed a zero image.
        """
        return self._finish(self._launch(batch))

    def embed_stream(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`__call__` over many batches, in order, one batch ahead on CUDA.

        Batch ``i + 1`` is fetched, decoded (on the device, or already decoded by CPU workers
        into pinned memory) and queued while batch ``i``'s forward pass still runs; batch ``i``
        is yielded after. Same outputs as calling :meth:`__call__` on each batch.
        """
        pending: _Pending | None = None
        for batch in batches:
            launched = self._launch(batch)
            if pending is not None:
                yield self._finish(pending)
            pending = launched
        if pending is not None:
            yield self._finish(pending)
