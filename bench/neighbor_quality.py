"""How much of SCAN's and UNIC's gain over k-means is limited by the kNN graph's precision.

    python bench/neighbor_quality.py --embeddings results/artifacts/embeddings/cifar10/test/efficientnet_lite0
    python bench/neighbor_quality.py --embeddings DIR --methods unic,scan --precisions mined,0.8,1.0 --seeds 0,1
    python bench/neighbor_quality.py --embeddings DIR --methods scan --set scan.head=mlp --set scan.num_heads=1
    python bench/neighbor_quality.py --embeddings DIR --methods unic,unic@raw --precisions 1.0 \
        --set unic@raw.clean_rule=none --set unic@raw.neg_rule=none

A method may carry a label after ``@`` (``unic@raw``): the same method under its own
``--set LABEL.KEY=VALUE`` overrides, so one run compares ablations on the same tables.

A diagnostic, not a method: it reads the ground-truth labels to build neighbour tables of a
chosen precision, so nothing here may choose a default. On one cached embeddings artifact it
fits each method with

* ``mined``: the exact kNN table of the embeddings (what the product mines), and
* ``p`` in (0, 1]: a table whose every slot holds, with probability ``p``, the anchor's next
  nearest *same-class* image and otherwise its next nearest *other-class* image, both in
  embedding order (so 1.0 is the kNN graph of an oracle that never crosses a class boundary,
  still made of the nearest images the features give).

It prints each table's 20-NN precision, each method's ACC / NMI and the gain over k-means on the
same embeddings (the reference, fitted in the same run). If a method learns, its ACC should rise
with the table's precision; if it stays level with k-means at p = 1.0 the method is at fault,
not the features. No Ray needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))

from deepclust.artifacts import ArtifactStore  # noqa: E402
from deepclust.config import from_dict, parse_override  # noqa: E402
from deepclust.knn import knn_self, neighbor_precision  # noqa: E402
from deepclust.metrics import clustering_metrics  # noqa: E402
from trainables.methods import METHODS, FitInputs  # noqa: E402


def same_and_other_class_lists(x: np.ndarray, y: np.ndarray, k: int) -> tuple:
    """(N, k) nearest same-class and (N, k) nearest other-class neighbours, embedding order."""
    n = len(y)
    same = np.empty((n, k), dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        idx, _ = knn_self(x[rows], min(k, len(rows) - 1))
        same[rows] = rows[idx][:, np.arange(k) % idx.shape[1]]
    # the other-class list: the mined table with same-class entries removed, topped up from a
    # deeper search where an anchor's first 4k neighbours hold fewer than k of other classes
    deep, _ = knn_self(x, min(4 * k, n - 1))
    other = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        cand = deep[i][y[deep[i]] != y[i]]
        if len(cand) < k:
            pool = np.flatnonzero(y != y[i])
            cand = np.concatenate([cand, pool[~np.isin(pool, cand)]])
        other[i] = cand[:k]
    return same, other


def mixed_table(same: np.ndarray, other: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Slot j of row i: the row's next same-class neighbour with probability p, else its next
    other-class neighbour (both lists consumed in order)."""
    take_same = np.random.default_rng(seed).random(same.shape) < p
    s_pos = np.cumsum(take_same, axis=1) - 1
    o_pos = np.cumsum(~take_same, axis=1) - 1
    rows = np.arange(len(same))[:, None]
    return np.where(take_same, same[rows, s_pos.clip(0)], other[rows, o_pos.clip(0)]).astype(
        np.int64
    )


def fit_score(method: str, x, y, table, seed: int, overrides: dict | None = None) -> dict:
    """Fit ``method`` (a registry name, optionally ``name@label``) and score it on ``y``."""
    cls = METHODS.get(method.partition("@")[0])
    model = cls(from_dict(cls.Config, overrides or {}))
    t0 = time.perf_counter()
    model.fit(
        FitInputs(
            embeddings=x,
            num_clusters=int(y.max()) + 1,
            seed=seed,
            neighbors=table if "neighbors" in cls.needs else None,
        )
    )
    out = clustering_metrics(y, model.predict(x))
    return {**out, "s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", type=Path, required=True, help="an embeddings artifact dir")
    ap.add_argument("--methods", default="unic,scan")
    ap.add_argument("--precisions", default="mined,0.8,1.0")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--kmax", type=int, default=50)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a config override for one method or method@label (JSON value), e.g. "
        "scan.head=mlp; repeatable",
    )
    args = ap.parse_args()
    overrides: dict[str, dict] = {}
    for item in args.set:
        target, value = parse_override(item)
        method, _, key = target.partition(".")
        overrides.setdefault(method, {})[key] = value
    emb = ArtifactStore.read_embeddings(args.embeddings)
    x, y = emb.features, emb.labels
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.precisions.split(",")
    tables = {"mined": knn_self(x, args.kmax)[0]} if "mined" in names else {}
    if any(p != "mined" for p in names):  # the label-built lists cost a 4k-deep search
        same, other = same_and_other_class_lists(x, y, args.kmax)
        tables |= {p: mixed_table(same, other, float(p), seed=0) for p in names if p != "mined"}
    tables = {p: tables[p] for p in names}
    km = [fit_score("kmeans", x, y, None, s)["acc"] for s in seeds]
    ref = float(np.mean(km))
    print(f"{len(y)} images, {x.shape[1]}-d; k-means ACC {100 * ref:.2f} (the reference)")
    print("| table | 20-NN precision | method | ACC | NMI | ACC - k-means | s/run |")
    print("|---|---|---|---|---|---|---|")
    for name, table in tables.items():
        prec = neighbor_precision(y, table, ks=(20,))["nbr_precision@20"]
        for method in args.methods.split(","):
            runs = [fit_score(method, x, y, table, s, overrides.get(method)) for s in seeds]
            acc = np.array([r["acc"] for r in runs])
            nmi = np.array([r["nmi"] for r in runs])
            print(
                f"| {name} | {prec:.3f} | {method} | {100 * acc.mean():.2f} ± {100 * acc.std():.2f}"
                f" | {100 * nmi.mean():.2f} | {100 * (acc.mean() - ref):+.2f}"
                f" | {np.mean([r['s'] for r in runs]):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
