"""Embedding path (decode + preprocess + model) against the bare model forward, same run.

    python bench/embed.py                                   # CPU, offline EfficientNet-Lite0
    python bench/embed.py --backbone vit_base_patch16_224 --random-weights --device cuda

The images are the shared CIFAR-10 JPEGs when ../shared/data is present, else synthetic PNGs.
"bare" feeds pre-made normalised tensors straight to the model; "path" runs exactly what a Ray
Data embedding actor runs (deepclust.preprocess.decode_batch + deepclust.embedder.Embedder),
here sequentially in one process (in Ray, decode runs on other CPUs, overlapped). No Ray needed.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test.parquet"


def load_images(n: int) -> list[bytes]:
    if SHARED.is_file():
        import pyarrow.parquet as pq

        return pq.read_table(SHARED, columns=["image"]).column("image").to_pylist()[:n]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--random-weights", action="store_true", help="skip weight loading (speed only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--n", type=int, default=256, help="images timed")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    from deepclust.embedder import Embedder
    from deepclust.preprocess import decode_batch, normalize_images

    emb = Embedder(args.backbone, pretrained=not args.random_weights, device=args.device)
    pp, dev, bs = emb.preprocess, emb.device, args.batch_size
    images = load_images(args.n)
    n = len(images)
    batches = [
        {
            "idx": np.arange(s, min(s + bs, n)),
            "label": np.zeros(min(bs, n - s)),
            "encoded": np.array(images[s : s + bs], dtype=object),
        }
        for s in range(0, n, bs)
    ]
    fake = torch.randint(0, 255, (bs, pp.input_size, pp.input_size, 3), dtype=torch.uint8)
    ready = normalize_images(fake.to(dev), pp)

    @torch.inference_mode()
    def bare(x):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=emb.autocast):
            return emb.model.forward_head(emb.model.forward_features(x), pre_logits=True)

    for _ in range(2):  # warm-up (cudnn autotune, allocator, lazy init)
        bare(ready)
        emb(decode_batch(batches[0], pp))
    sync(dev)
    t0 = time.perf_counter()
    for b in batches:
        bare(ready[: len(b["idx"])])
    sync(dev)
    t_bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_decode = 0.0
    for b in batches:
        td = time.perf_counter()
        decoded = decode_batch(b, pp)
        t_decode += time.perf_counter() - td
        emb(decoded)
    sync(dev)
    t_path = time.perf_counter() - t0
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(
        f"backbone={args.backbone} device={name} images={n} batch={bs} "
        f"threads={torch.get_num_threads()} autocast_bf16={emb.autocast}"
    )
    print(f"bare model forward : {t_bare:8.2f}s  {n / t_bare:8.1f} img/s")
    print(
        f"full embedding path: {t_path:8.2f}s  {n / t_path:8.1f} img/s "
        f"(decode+resize {t_decode:.2f}s)"
    )
    print(f"ratio path/bare    : {t_path / t_bare:8.2f}")


if __name__ == "__main__":
    main()
