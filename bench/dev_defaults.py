"""Defaults chosen on development data: IIC's lr, SPICE's reliable-set balancing, UNIC's head.

    OMP_NUM_THREADS=1 python bench/dev_defaults.py                  # all three, seeds 0-2
    OMP_NUM_THREADS=1 python bench/dev_defaults.py --only iic --seeds 0

The development set is never an evaluation set of a protocol the project reports (clustering
on all of digits, clustering on the CIFAR-10 test parquet, GCD scored on the unlabelled part of
the CIFAR-10 train parquet): it is the first ``--n`` (5,000) rows, by row index, of the CIFAR-10
train images that the GCD split holds as *labelled* (``deepclust.gcd.make_split`` on the train
labels with the default Old classes 0-4 and labelled fraction 0.5, seed 0). Labelled images are
never scored, so the set has the 5 Old classes and is clustered into 5.

Embeddings: the default offline backbone (EfficientNet-Lite0, CPU), as the learning tests embed
digits; kNN: ``deepclust.knn.knn_self(feats, 50)``. They are cached to ``--cache`` (under /tmp
by default, never in the repository); the first run embeds 5,000 images (~7 min on one core).

For each default, every candidate runs with the method's other defaults (full fidelity) on
seeds 0-2; the table prints ACC (Hungarian, labels used only to score) per seed, the mean and
the population std, with k-means (default config, same seeds) on the same embeddings as the
reference. Candidates: IIC ``lr`` in {1e-4 (paper), 1e-3, 1e-2, 3e-2}; SPICE ``balance`` in
{smallest (the official code's rule, with the empty-set fallback of docs/methods.md, SPICE:
empty-set fallback), median}; UNIC ``head`` in {linear (the design's default, docs/methods.md,
UNIC: head), mlp}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))
CANDIDATES = {
    "iic": ("lr", [1e-4, 1e-3, 1e-2, 3e-2]),
    "spice": ("balance", ["smallest", "median"]),
    "unic": ("head", ["linear", "mlp"]),
}
K = 5  # the GCD Old classes of CIFAR-10 (airplane ... deer)
DEV_N = 5000  # rows of the development set (``--n``)


def dev_rows(train_labels: np.ndarray, n: int) -> np.ndarray:
    """Row ids (into the train parquet) of the first ``n`` GCD-labelled images, by index."""
    from deepclust.gcd import default_old_classes, make_split

    split = make_split(train_labels, default_old_classes("cifar10", 10), 0.5, 0.0)
    return split.labelled_idx[:n]


def embed_dev_set(data_root: Path, n: int, batch: int) -> dict[str, np.ndarray]:
    import torch

    from deepclust.datasets import load_parquet
    from deepclust.embedder import Embedder
    from deepclust.knn import knn_self
    from deepclust.preprocess import decode_batch

    images = load_parquet(data_root / "cifar10" / "train.parquet", name="cifar10", split="train")
    rows = dev_rows(np.asarray(images.labels), n)
    wanted = np.zeros(len(images), dtype=bool)
    wanted[rows] = True
    embedder = Embedder("efficientnet_lite0", device="cpu")
    feats, idx, labels = [], [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in images.batches(512):
            keep = wanted[b["idx"]]
            if keep.any():
                sub = {k: v[keep] for k, v in b.items()}
                for s in range(0, len(sub["idx"]), batch):
                    part = {k: v[s : s + batch] for k, v in sub.items()}
                    feats.append(
                        embedder.embed_images(decode_batch(part, embedder.preprocess)["image"])
                    )
                idx.append(sub["idx"])
                labels.append(sub["label"])
                done = sum(len(i) for i in idx)
                print(f"  embedded {done}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if b["idx"][-1] >= rows[-1]:
                break
    out = {
        "feats": np.concatenate(feats).astype(np.float32),
        "idx": np.concatenate(idx),
        "labels": np.concatenate(labels),
    }
    assert np.array_equal(out["idx"], rows), "dev rows out of order"
    out["nbr"] = knn_self(out["feats"], 50)[0]
    return out


def add_dev_set_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-root, --cache and --n: where the development set comes from and is cached
    (shared by the benches that read it)."""
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/deepclust_dev_cifar10_gcd_labelled.npz")
    )
    parser.add_argument("--n", type=int, default=DEV_N)


def load_dev_set(cache: Path, data_root: Path, n: int) -> dict[str, np.ndarray]:
    if cache.is_file():
        data = dict(np.load(cache))
        if len(data["idx"]) == n:
            print(f"dev set: {cache} (cached)")
            return data
    print(f"dev set: embedding {n} GCD-labelled CIFAR-10 train images -> {cache}")
    data = embed_dev_set(data_root, n, 64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def score(name: str, config: dict, data: dict, seed: int, k: int = K) -> tuple[float, float]:
    """(ACC, seconds) of one fit and prediction of ``name`` on ``data`` (``feats``, ``nbr``,
    ``labels``) with ``k`` clusters; labels read only to score."""
    out = fit_and_score(name, config, data, seed, k)
    return out["acc"], out["seconds"]


def fit_and_score(name: str, config: dict, data: dict, seed: int, k: int = K) -> dict:
    """``score``'s fit, with the label-free ``neighbor_agreement`` of its predictions (the
    search objective of TEMI, IIC and SPICE, deepclust/selection.py) beside its ACC."""
    from deepclust.config import from_dict
    from deepclust.metrics import hungarian_acc
    from deepclust.selection import neighbor_agreement
    from trainables.methods import METHODS, FitInputs

    cls = METHODS.get(name)
    method = cls(from_dict(cls.Config, config))
    t0 = time.perf_counter()
    method.fit(FitInputs(data["feats"], k, seed, data["nbr"]))
    pred = method.predict(data["feats"])
    return {
        "acc": float(hungarian_acc(data["labels"], pred)),
        "seconds": time.perf_counter() - t0,
        "agreement": neighbor_agreement(pred, data["nbr"], k),
    }


def row(label: str, accs: list[float], secs: float) -> str:
    cells = " | ".join(f"{100 * a:.2f}" for a in accs)
    return (
        f"| {label} | {cells} | **{100 * np.mean(accs):.2f}** +- {100 * np.std(accs):.2f} "
        f"| {secs:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dev_set_arguments(parser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="iic,spice,unic")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_dev_set(args.cache, args.data_root, args.n)
    counts = np.bincount(data["labels"], minlength=K)
    print(f"{len(data['labels'])} images, classes {counts.tolist()}, seeds {seeds}\n")
    head = "| candidate | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std | s |"
    rule = "|" + " --- |" * (len(seeds) + 3)
    kmeans = [score("kmeans", {}, data, s) for s in seeds]
    for name in args.only.split(","):
        field, values = CANDIDATES[name]
        print(f"### {name}.{field} (dev ACC %, {len(seeds)} seeds)\n\n{head}\n{rule}")
        print(row("k-means (reference)", [a for a, _ in kmeans], sum(t for _, t in kmeans)))
        for value in values:
            runs = []
            for s in seeds:
                runs.append(score(name, {field: value}, data, s))
            print(
                row(f"{field}={value}", [a for a, _ in runs], sum(t for _, t in runs)), flush=True
            )
        print()


if __name__ == "__main__":
    main()
