"""Embedder on CPU: raw-source batches (decoded on the host or with the device path), the
pipelined stream, and the CUDA-only fast paths' CPU fallbacks keep the same outputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from deepclust.embedder import Embedder
from deepclust.preprocess import decode_batch


def _jpeg(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("efficientnet_lite0", device="cpu", num_threads=2, decode_on_device=True)


@pytest.fixture(scope="module")
def batch() -> dict:
    """Six JPEGs of mixed sizes (CIFAR-sized and photos), one PNG and one unreadable row."""
    flower, china = load_sample_image("flower.jpg"), load_sample_image("china.jpg")
    tiles = [china[y : y + 32, x : x + 32] for y, x in [(0, 0), (200, 300), (100, 500)]]
    png = io.BytesIO()
    Image.fromarray(tiles[0]).save(png, "PNG")
    encoded = [_jpeg(t) for t in tiles]
    encoded += [_jpeg(flower), _jpeg(china[:300, :200]), png.getvalue(), b"not an image"]
    encoded += [_jpeg(flower, progressive=True)]
    n = len(encoded)
    col = np.empty(n, dtype=object)
    col[:] = encoded
    return {"idx": np.arange(10, 10 + n), "label": np.arange(n) % 3, "encoded": col}


def test_device_decode_batch_embeds_like_the_host_decoded_one(embedder, batch):
    out = embedder(batch)
    assert set(out) == {"idx", "label", "error", "embedding"}
    n = len(batch["idx"])
    assert out["embedding"].shape == (n, 1280) and out["embedding"].dtype == np.float32
    np.testing.assert_array_equal(out["idx"], batch["idx"])
    np.testing.assert_array_equal(out["label"], batch["label"])
    host = decode_batch(batch, embedder.preprocess)
    assert list(out["error"]) == list(host["error"])
    assert [bool(e) for e in out["error"]] == [False] * 6 + [True, False]
    ref = embedder(host)
    cosine = (out["embedding"] * ref["embedding"]).sum(1)
    assert cosine.min() > 0.9999, cosine  # measured: pixels within 1 grey level of PIL's


def test_raw_batch_without_device_decode_uses_decode_batch(batch):
    emb = Embedder("efficientnet_lite0", device="cpu", num_threads=2)
    out = emb(batch)
    ref = emb(decode_batch(batch, emb.preprocess))
    np.testing.assert_array_equal(out["embedding"], ref["embedding"])
    assert list(out["error"]) == list(ref["error"])


def test_stream_matches_per_batch_calls(embedder, batch):
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    streamed = list(embedder.embed_stream(iter(halves)))
    assert [list(o["idx"]) for o in streamed] == [list(h["idx"]) for h in halves]
    for got, half in zip(streamed, halves, strict=True):
        want = embedder(half)
        np.testing.assert_array_equal(got["embedding"], want["embedding"])
        assert list(got["error"]) == list(want["error"])
    assert list(embedder.embed_stream([])) == []


def test_torch_and_numpy_image_batches_embed_identically(embedder, batch):
    host = decode_batch(batch, embedder.preprocess)
    from_numpy = embedder.embed_images(host["image"])
    from_torch = embedder.embed_images(torch.from_numpy(host["image"]))
    np.testing.assert_array_equal(from_numpy, from_torch)
    as_loader = dict(host, image=torch.from_numpy(host["image"]), error=list(host["error"]))
    np.testing.assert_array_equal(embedder(as_loader)["embedding"], from_numpy)


def test_cpu_forward_in_chunks_matches_one_call(embedder, batch, monkeypatch):
    """The CPU forward runs on chunks of CPU_CHUNK or more rows; a batch of several chunks
    embeds as one model call over the whole batch does (bit for bit on the machine measured;
    the assertion allows float noise from kernels that differ with the batch size)."""
    import deepclust.embedder as embedder_module

    host = decode_batch(batch, embedder.preprocess)
    images = np.concatenate([host["image"]] * 5)  # 40 rows: two chunks of 20
    monkeypatch.setattr(embedder_module, "CPU_CHUNK", 16)
    chunked = embedder.embed_images(images)
    monkeypatch.setattr(embedder_module, "CPU_CHUNK", len(images))
    whole = embedder.embed_images(images)
    assert chunked.shape == whole.shape == (40, 1280)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
