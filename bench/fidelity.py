"""What a method's training schedule costs and buys on ``digits``: one fit per seed, in this
process on one thread (as a seed run of the sweep trains), at a fidelity plus any overrides.

    python bench/fidelity.py --method spice                                  # laptop fidelity
    python bench/fidelity.py --method spice --set '{"semi_min_steps": 0}'    # without its floor
    python bench/fidelity.py --method unic --fidelity full --seeds 0

Prints per seed the fit's seconds and its ACC (labels read only to score), then the means, with
k-means (default config, same seeds) on the same embeddings as the reference. The inputs are
the main job's own: the digits embeddings and mined 50-NN table under its output folder
(``--results``, default ./results). This is how the main job's cost floor in docs/results.md
was measured.
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

from dev_defaults import score  # noqa: E402


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
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_main_job_inputs(args.results)
    config = {**fidelity_overrides(args.method, args.fidelity), **json.loads(args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.method} {config} on digits ({len(data['feats'])} images), 1 thread")
    print("| seed | seconds | ACC | k-means ACC |")
    print("|---|---|---|---|")
    rows = []
    for seed in seeds:
        acc, secs = score(args.method, config, data, seed, k=10)
        ref, _ = score("kmeans", {}, data, seed, k=10)
        acc, ref = 100 * acc, 100 * ref
        rows.append((secs, acc, ref))
        print(f"| {seed} | {secs:.1f} | {acc:.2f} | {ref:.2f} |", flush=True)
    secs, acc, ref = np.mean(rows, axis=0)
    print(f"| mean | {secs:.1f} | {acc:.2f} | {ref:.2f} |")


if __name__ == "__main__":
    main()
