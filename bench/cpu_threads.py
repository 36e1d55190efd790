"""CPU embedding layout: one process with T torch threads against T single-thread processes.

    python bench/cpu_threads.py                 # T = every core, offline EfficientNet-Lite0
    python bench/cpu_threads.py --threads 4 --images 256

Both layouts run the backbone's forward (deepclust.embedder.Embedder, its own preprocessing)
on the same random 224x224 images; the single-thread processes split them evenly and start
together. Prints each layout's images/s and their ratio (processes / threads); above 1 means
one single-thread actor per CPU (orchestrator/embed.py, CPU-only clusters) embeds faster.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's deepclust, not an installed copy
    sys.path.insert(0, str(ROOT))


def _embed(args: tuple[str, int, int, int, mp.Barrier | None]) -> float:
    """Seconds to embed ``images`` images with ``threads`` threads (after a warm-up batch)."""
    backbone, threads, images, batch, barrier = args
    import numpy as np
    import torch

    from deepclust.embedder import Embedder

    torch.set_num_threads(threads)
    embedder = Embedder(backbone, num_threads=threads)
    x = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    embedder.embed_images(x)  # warm-up
    if barrier is not None:
        barrier.wait()
    t0 = time.perf_counter()
    for _ in range(max(1, images // batch)):
        embedder.embed_images(x)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--images", type=int, default=128, help="images per layout")
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args()
    t, n, b = a.threads, a.images, a.batch_size
    one = _embed((a.backbone, t, n, b, None))
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(t)
        with ctx.Pool(t) as pool:
            each = pool.map(_embed, [(a.backbone, 1, n // t, b, barrier)] * t)
    threads_rate, procs_rate = n / one, n / max(each)
    print(f"1 process x {t} threads: {threads_rate:.1f} images/s")
    print(f"{t} processes x 1 thread: {procs_rate:.1f} images/s")
    print(f"ratio processes / threads: {procs_rate / threads_rate:.2f}")


if __name__ == "__main__":
    main()
