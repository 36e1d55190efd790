"""Exact self-kNN: faiss-cpu vs torch vs scikit-learn on the same inputs.

    python bench/knn.py                 # N=50,000, d=384, k=50 (a few minutes on 2 cores)
    python bench/knn.py --n 5000        # quick look

Prints each backend's wall time and its ratio to faiss-cpu measured in the same run, plus the
neighbour-set agreement with faiss (exact methods should agree up to float ties).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def run_faiss(x, k):
    from deepclust.knn import knn_self

    return knn_self(x, k, backend="faiss", normalize=False)[0]


def run_torch(x, k):
    from deepclust.knn import knn_self

    return knn_self(x, k, backend="torch", normalize=False)[0]


def run_sklearn(x, k):
    from sklearn.neighbors import NearestNeighbors

    # brute force cosine: the exact scikit-learn path (trees don't support cosine)
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine", n_jobs=-1)
    ids = nn.fit(x).kneighbors(x, return_distance=False)
    out = np.empty((len(x), k), np.int64)
    for i, row in enumerate(ids):  # drop self wherever it landed
        row = row[row != i]
        out[i] = row[:k]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--skip", default="", help="comma list of backends to skip")
    args = p.parse_args()
    from deepclust.knn import l2_normalize

    x = l2_normalize(np.random.default_rng(0).normal(size=(args.n, args.d)).astype(np.float32))
    print(f"self-kNN N={args.n} d={args.d} k={args.k}")
    results, times = {}, {}
    for name, fn in [("faiss-cpu", run_faiss), ("torch", run_torch), ("sklearn", run_sklearn)]:
        if name in args.skip.split(","):
            continue
        t0 = time.perf_counter()
        results[name] = fn(x, args.k)
        times[name] = time.perf_counter() - t0
    ref = "faiss-cpu" if "faiss-cpu" in times else next(iter(times))
    print(f"{'backend':<10} {'seconds':>9} {'ratio vs ' + ref:>16} {'agreement':>10}")
    for name, sec in times.items():
        agree = np.mean(
            [
                len(set(a) & set(b)) / args.k
                for a, b in zip(results[name], results[ref], strict=True)
            ]
        )
        print(f"{name:<10} {sec:>9.2f} {sec / times[ref]:>16.2f} {agree:>10.4f}")


if __name__ == "__main__":
    main()
