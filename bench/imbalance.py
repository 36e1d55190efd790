"""Every method on long-tailed versions of a benchmark: ACC and balanced ACC per ratio.

    python bench/imbalance.py --output /tmp/lt_bench                 # R = 1, 10, 100
    python bench/imbalance.py --ratios 10,100 --methods kmeans,unic  # a part

For each ratio R it runs the product (``python -m orchestrator.sweep --benchmark B --imbalance
R --methods M --budget 0``, each method's default configuration at the machine's default
fidelity, seeds 0, 1, 2; R = 1 is the benchmark as it is) and prints one table: per method and
ratio, ACC and balanced ACC (mean per-class recall after the Hungarian matching), mean +- std
over seeds (computed here from each run's predictions), and which methods beat k-means on both
at every ratio. The long tail is the
CIFAR-10-LT profile (deepclust/views.py): class i keeps n_max * R^(-i/(C-1)) images, a fixed
draw. Runs and embeddings are cached under ``--output`` (the long-tailed sets reuse the full
set's embeddings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))


def sweep(args: argparse.Namespace, ratio: float) -> list[dict]:
    extra = [] if ratio == 1 else ["--imbalance", f"{ratio:g}"]
    cmd = [
        sys.executable, "-m", "orchestrator.sweep", "--benchmark", args.benchmark, *extra,
        "--methods", args.methods, "--budget", "0", "--seeds", args.seeds,
        "--output", str(args.output),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: a degenerate run, still in the leaderboard
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    print(f"  R={ratio:g}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    name = args.benchmark + ("" if ratio == 1 else f"[lt={ratio:g}]")
    table = json.loads((args.output / "leaderboard.json").read_text())
    return [r for r in table if r["benchmark"] == name and not r["oracle"]]


def scores(args: argparse.Namespace, ratio: float, row: dict) -> dict[str, list[float]]:
    """ACC and balanced ACC of each seed's run of a leaderboard row, computed here from the
    run's predictions and the view's labels (the same for runs any version wrote)."""
    import pyarrow.parquet as pq

    from deepclust.artifacts import ArtifactStore
    from deepclust.datasets import resolve_dataset
    from deepclust.metrics import balanced_acc, hungarian_acc
    from deepclust.views import BenchmarkView, apply_view

    spec = resolve_dataset(args.benchmark)
    images = spec.load(spec.eval_split, Path("."), False)
    view = BenchmarkView(imbalance=None if ratio == 1 else ratio)
    labels = apply_view(images, view).labels
    store = ArtifactStore(args.output)
    out: dict[str, list[float]] = {"acc": [], "bacc": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        variant = f"{row['method']}-{row['config_hash']}"
        run = store.run_dir(row["benchmark"], row["backbone"], variant, seed)
        pred = pq.read_table(run / "predictions.parquet").column("cluster").to_numpy()
        out["acc"].append(hungarian_acc(labels, pred))
        out["bacc"].append(balanced_acc(labels, pred))
    return out


def cell(values: list[float]) -> str:
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="parquet:../shared/data/cifar10/test.parquet")
    p.add_argument("--ratios", default="1,10,100")
    p.add_argument("--methods", default="all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--output", type=Path, default=Path("/tmp/unic_imbalance_bench"))
    args = p.parse_args()
    args.output = args.output.resolve()
    os.chdir(ROOT)  # the benchmark's path is read as the sweep reads it, from the repository
    ratios = [float(r) for r in args.ratios.split(",")]
    rows = {ratio: {r["method"]: r for r in sweep(args, ratio)} for ratio in ratios}
    methods = sorted({m for by in rows.values() for m in by})
    measured = {(m, r): scores(args, r, rows[r][m]) for r in ratios for m in rows[r]}
    head = " | ".join(f"R={r:g} ACC | R={r:g} bal. ACC" for r in ratios)
    print(f"| method | {head} |")
    print("|---|" + "---|---|" * len(ratios))
    for m in methods:
        cells = " | ".join(
            f"{cell(measured[m, r]['acc'])} | {cell(measured[m, r]['bacc'])}"
            if (m, r) in measured
            else "- | -"
            for r in ratios
        )
        print(f"| {m} | {cells} |")
    sizes = {r: int(next(iter(rows[r].values()))["n_eval"]) for r in ratios if rows[r]}
    print("images per ratio: " + ", ".join(f"R={r:g}: {n}" for r, n in sizes.items()))
    if all(("kmeans", r) in measured for r in ratios):
        winners = []
        for m in methods:
            if m == "kmeans" or not all((m, r) in measured for r in ratios):
                continue
            better = [
                np.mean(measured[m, r][s]) > np.mean(measured["kmeans", r][s])
                for r in ratios
                for s in ("acc", "bacc")
            ]
            if all(better):
                winners.append(m)
        print(
            "beat k-means on ACC and balanced ACC at every ratio: " + (", ".join(winners) or "none")
        )


if __name__ == "__main__":
    main()
