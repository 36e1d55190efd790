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


def _jpeg_batch(n: int, start: int = 0) -> dict:
    """``n`` JPEGs: CIFAR-sized tiles and larger crops of the sklearn photos (several sizes)."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("flower.jpg"), load_sample_image("china.jpg")]
    encoded = np.empty(n, dtype=object)
    for i in range(n):
        photo = photos[i % 2]
        side = (32, 32, 64, 200)[i % 4]
        y, x = (7 * i) % (photo.shape[0] - side), (13 * i) % (photo.shape[1] - side)
        buf = io.BytesIO()
        Image.fromarray(photo[y : y + side, x : x + side]).save(buf, "JPEG", quality=90)
        encoded[i] = buf.getvalue()
    return {"idx": np.arange(start, start + n), "label": np.zeros(n), "encoded": encoded}


def test_nvjpeg_decode_is_close_to_the_pil_path():
    from deepclust.backbones import backbone_preprocess
    from deepclust.gpu_decode import decode_batch_on_device
    from deepclust.preprocess import decode_batch

    pp = backbone_preprocess("efficientnet_lite0")
    batch = _jpeg_batch(32)
    dev = decode_batch_on_device(batch, pp, "cuda")
    ref = decode_batch(batch, pp)
    assert dev["image"].is_cuda and dev["image"].shape == ref["image"].shape
    assert list(dev["error"]) == list(ref["error"]) == [""] * 32
    diff = np.abs(dev["image"].cpu().numpy().astype(int) - ref["image"].astype(int))
    # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: a few grey levels on average;
    # a wrong geometry, channel order or colour conversion would be tens of levels off
    assert diff.mean() < 3.0, diff.mean()


def test_device_decode_embeds_like_host_decode_and_overlaps_safely():
    from deepclust.preprocess import decode_batch

    emb = Embedder("efficientnet_lite0", device="cuda", decode_on_device=True)
    batches = [_jpeg_batch(64, start=64 * k) for k in range(4)]
    # the stream decodes batch i+1 (nvJPEG writes from its own CUDA stream) while batch i's
    # forward pass still reads its memory: any unsafe buffer reuse shows up as a difference
    streamed = list(emb.embed_stream(batches))
    for got, batch in zip(streamed, batches, strict=True):
        alone = emb(batch)
        host = emb(decode_batch(batch, emb.preprocess))
        np.testing.assert_array_equal(got["idx"], batch["idx"])
        assert (got["embedding"] * alone["embedding"]).sum(1).min() > 0.9999
        assert (got["embedding"] * host["embedding"]).sum(1).min() > 0.99


def test_pinned_and_pageable_batches_embed_the_same():
    images = np.random.default_rng(0).integers(0, 255, (8, 224, 224, 3), dtype=np.uint8)
    emb = Embedder("efficientnet_lite0", device="cuda")
    pageable = emb.embed_images(images)
    pinned = emb.embed_images(torch.from_numpy(images).pin_memory())
    on_device = emb.embed_images(torch.from_numpy(images).cuda())
    assert (pageable * pinned).sum(1).min() > 0.9999 and (pageable * on_device).sum(
        1
    ).min() > 0.9999
