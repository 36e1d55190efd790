"""The embedding callable: uint8 images -> L2-normalised backbone features.

The same class runs inside Ray Data's actor pool (``orchestrator/embed.py``: built once per
actor, called per batch) and on its own (``bench/embed.py``, tests). It holds no Ray state.
"""

from __future__ import annotations

import numpy as np
import torch

from deepclust.backbones import build_backbone
from deepclust.preprocess import normalize_images


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder:
    """Frozen backbone features for batches of decoded images.

    Args:
        backbone: registered or timm name.
        weights_file: optional local weights for timm backbones.
        pretrained: False for random weights (speed benchmarks).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``.
        num_threads: CPU threads for torch (Ray sets OMP threads to the actor's CPU reservation,
            which starves a CPU-only embedder; the orchestrator passes the real budget).
    """

    def __init__(
        self,
        backbone: str,
        weights_file: str | None = None,
        pretrained: bool = True,
        device: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        model, self.preprocess = build_backbone(backbone, weights_file, pretrained)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        # bf16 autocast on GPU (speed; features are L2-normalised in fp32 afterwards);
        # fp32 on CPU where bf16 kernels are slower than fp32 on most server CPUs.
        self.autocast = self.device.type == "cuda"

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, D) float32 unit-norm features."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        x = normalize_images(x, self.preprocess)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        feats = torch.nn.functional.normalize(feats.float().flatten(1), dim=1)
        return feats.cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data batch: ``idx``, ``label``, ``image``, ``error`` -> ``idx``, ``label``,
        ``error``, ``embedding`` (B, D) float32."""
        emb = self.embed_images(batch["image"])
        return {
            "idx": np.asarray(batch["idx"], dtype=np.int64),
            "label": np.asarray(batch["label"], dtype=np.int64),
            "error": np.asarray(batch["error"], dtype=object).astype(str),
            "embedding": emb,
        }
