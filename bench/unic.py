"""UNIC costs on this machine: head-training throughput on cached embeddings, and the growth of
neighbour cleaning / negative thresholds with N.

    python bench/unic.py                       # N = 10k, 50k, 200k; d = 384; pos_k = m = 20
    python bench/unic.py --sizes 10000,50000

Cleaning runs on random kNN tables of the given shape (its cost depends only on N, pos_k and
m, not on which ids the table holds), so no 200k exact mining is needed. Throughput compares a
full training step (pair sampling + negatives + one forward/backward over anchors, positives
and negatives of every restart head) against the bare head forward/backward on as many rows,
measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def clean_cost(n: int, d: int, pos_k: int) -> tuple[float, float]:
    from deepclust.neighbors import clean_positives, negative_thresholds

    rng = np.random.default_rng(0)
    nbr = rng.integers(0, n, size=(n, pos_k), dtype=np.int64)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    t0 = time.perf_counter()
    clean_positives(nbr, pos_k, "pair_overlap", min_shared_frac=0.2)
    t_clean = time.perf_counter() - t0
    t0 = time.perf_counter()
    negative_thresholds(feats, 0.9)
    return t_clean, time.perf_counter() - t0


def throughput(n: int, d: int, heads: int, steps: int) -> tuple[float, float]:
    from deepclust.config import from_dict
    from trainables.heads import ClusterHead, MultiHead
    from trainables.methods.base import FitInputs
    from trainables.methods.unic import Unic, UnicConfig, _CachedSteps, unic_step

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    nbr = rng.integers(0, n, size=(n, 50), dtype=np.int64)
    method = Unic(from_dict(UnicConfig, {"num_heads": heads}))
    cfg, sampler = method._prepare(FitInputs(feats, 10, 0, nbr))
    x = torch.from_numpy(feats)
    model = (
        MultiHead([ClusterHead(d, 10) for _ in range(heads)]) if heads > 1 else ClusterHead(d, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = _CachedSteps(sampler, x, cfg.batch_size, 0, 0)
    t0 = time.perf_counter()
    for batch in stream.batches(0, steps):
        loss, _ = unic_step(model, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_full = time.perf_counter() - t0
    rows = cfg.batch_size * (2 + cfg.n_neg)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(x[:rows])
        opt.zero_grad()
        out.float().logsumexp(-1).mean().backward()
        opt.step()
    t_bare = time.perf_counter() - t0
    return steps * cfg.batch_size / t_full, steps * cfg.batch_size / t_bare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10000,50000,200000")
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--pos-k", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    print(f"torch threads={torch.get_num_threads()}")
    for heads in (1, 10):
        full, bare = throughput(10_000, 1280, heads, args.steps)
        print(
            f"head training, N=10k d=1280, {heads:>2} head(s): {full:9.0f} anchors/s "
            f"(bare head fwd/bwd on the same rows: {bare:9.0f}/s, ratio {bare / full:.2f})"
        )
    sizes = [int(s) for s in args.sizes.split(",")]
    base = None
    print(f"{'N':>8} {'clean s':>9} {'x vs first':>10} {'thresholds s':>13} {'x vs first':>10}")
    for n in sizes:
        t_clean, t_thr = clean_cost(n, args.d, args.pos_k)
        base = base or (n, t_clean, t_thr)
        print(
            f"{n:>8} {t_clean:>9.2f} {t_clean / base[1]:>10.2f} {t_thr:>13.2f} "
            f"{t_thr / base[2]:>10.2f}"
        )
    if len(sizes) > 1:
        growth = math.log(t_clean / base[1]) / math.log(sizes[-1] / base[0])
        print(f"cleaning cost grows as N^{growth:.2f} (expected ~N^1: O(N * pos_k * m log m))")


if __name__ == "__main__":
    main()
