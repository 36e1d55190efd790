"""GPU paths (skipped without CUDA): bf16 embedding and CUDA kNN agree with the CPU paths."""

import numpy as np
import pytest
import torch

from deepclust.embedder import Embedder
from deepclust.knn import knn_self

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_knn_matches_cpu():
    x = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    gpu_ids, gpu_sims = knn_self(x, 20, backend="torch")  # auto-placed on CUDA
    cpu_ids, cpu_sims = knn_self(x, 20, backend="faiss")
    np.testing.assert_allclose(gpu_sims, cpu_sims, atol=1e-4)
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(gpu_ids, cpu_ids, strict=True)])
    assert overlap > 0.99


def test_bf16_embeddings_are_close_to_fp32_cpu():
    images = np.random.default_rng(0).integers(0, 255, (8, 224, 224, 3), dtype=np.uint8)
    gpu = Embedder("efficientnet_lite0", device="cuda").embed_images(images)
    cpu = Embedder("efficientnet_lite0", device="cpu").embed_images(images)
    cosine = (gpu * cpu).sum(1)
    assert cosine.min() > 0.98
