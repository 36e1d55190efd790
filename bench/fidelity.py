"""What a method's training schedule costs and buys on ``digits``: one fit per seed, in this
process on one thread (as a seed run of the sweep trains), at a fidelity plus any overrides.

    python bench/fidelity.py --method spice                                  # laptop fidelity
    python bench/fidelity.py --method spice --set '{"semi_min_steps": 0}'    # without its floor
    python bench/fidelity.py --method unic --fidelity full --seeds 0
    python bench/fidelity.py --method spice --dev --n 1797                   # development set

Prints per seed the fit's seconds and its ACC (labels read only to score), then the means, with
k-means (default config, same seeds) on the same embeddings as the reference, and the fit's
label-free ``neighbor_agreement`` (what a search ranks TEMI, IIC and SPICE trials by). The
inputs are the main job's own: the digits embeddings and mined 50-NN table under its output
folder (``--results``, default ./results). This is how the main job's cost floor in
docs/results.md was measured.

``--dev``: the same on the development set of bench/dev_defaults.py (CIFAR-10 train images
that no reported protocol scores, K = 5) instead of ``digits``, cut to its first ``--n`` rows
with their own 50-NN table: how a laptop-fidelity schedule is chosen without reading a label
of a reported benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dev_defaults import (  # noqa: E402
    DEV_N,
    K,
    add_dev_set_arguments,
    fit_and_score,
    load_dev_set,
    score,
)


def load_main_job_inputs(results: Path) -> dict[str, np.ndarray]:
    """The main job's digits embeddings and 50-NN table from its output folder."""
    from deepclust.artifacts import ArtifactStore

    store = ArtifactStore(results)
    directory = store.embeddings_dir("digits", "all", "efficientnet_lite0")
    if store.read_meta(directory) is None:
        sys.exit(
            f"no digits embeddings under {results}; run `python -m orchestrator.sweep --benchmark "
            f"digits --methods kmeans --budget 0 --seeds 0 --output {results}` first"
        )
    emb = store.read_embeddings(directory)
    nbr, _ = store.read_neighbors(store.neighbors_dir(emb.meta["key"], 50))
    return {"feats": emb.features, "labels": emb.labels, "nbr": nbr}


def dev_inputs(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The first ``args.n`` rows of the development set (all 5,000 when None), with their own
    50-NN table."""
    from deepclust.knn import knn_self

    full = load_dev_set(args.cache, args.data_root, DEV_N)
    n = args.n or len(full["feats"])
    feats = np.ascontiguousarray(full["feats"][:n])
    nbr = full["nbr"] if n == len(full["feats"]) else knn_self(feats, 50)[0]
    return {"feats": feats, "labels": full["labels"][:n], "nbr": nbr}


def main() -> None:
    import torch

    from search_spaces import FIDELITIES, fidelity_overrides

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True)
    p.add_argument("--fidelity", default="laptop", choices=FIDELITIES)
    p.add_argument("--set", default="{}", help="JSON config overrides on top of the fidelity")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--results", type=Path, default=Path("results"), help="the main job's --output folder"
    )
    p.add_argument("--dev", action="store_true", help="the development set instead of digits")
    add_dev_set_arguments(p)
    p.set_defaults(n=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.dev:
        data, k, where = dev_inputs(args), K, "the development set"
    else:
        data, k, where = load_main_job_inputs(args.results), 10, "digits"
    config = {**fidelity_overrides(args.method, args.fidelity), **json.loads(args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.method} {config} on {where} ({len(data['feats'])} images, K={k}), 1 thread")
    print("| seed | seconds | ACC | k-means ACC | neighbor_agreement |")
    print("|---|---|---|---|---|")
    rows = []
    for seed in seeds:
        fit = fit_and_score(args.method, config, data, seed, k=k)
        ref, _ = score("kmeans", {}, data, seed, k=k)
        rows.append((fit["seconds"], 100 * fit["acc"], 100 * ref, fit["agreement"]))
        print("| {} | {:.1f} | {:.2f} | {:.2f} | {:.4f} |".format(seed, *rows[-1]), flush=True)
    print("| mean | {:.1f} | {:.2f} | {:.2f} | {:.4f} |".format(*np.mean(rows, axis=0)))


if __name__ == "__main__":
    main()
