"""K̂ against the true K: the label-free estimator of ``--num-clusters auto``.

    python bench/num_clusters.py --dev                  # choose: the eigengap's graph on dev data
    python bench/num_clusters.py --output /tmp/kbench   # measure: the sweep on the benchmarks

``--dev`` compares the kNN graph's size (10, 20 or 50 neighbours per row), and two classic
k-means criteria (silhouette, Calinski-Harabasz), on the development set (5,000 GCD-labelled
CIFAR-10 train images, never scored by any table; see bench/dev_defaults.py) cut into subsets
of 2 to 5 of its classes: the true K, K̂ for each and the mean relative error. Labels only
define the subsets and the true K.

Without ``--dev`` it runs the product (``python -m orchestrator.sweep``, ``--budget 0``,
k-means and UNIC at their defaults, seed 0) on each case twice, with ``--num-clusters auto``
and with the true K, and prints per case: the true K, K̂, the relative error and the ACC of
each method with K̂ beside its ACC with K. Cases: ``digits``, the CIFAR-10 test parquet, the
same restricted to its first 3, 5 and 7 classes (``--classes``), and GCD on ``digits`` and on
the CIFAR-10 train pool (GCD's estimator on the labelled images); ``--cases`` picks some (the
CIFAR-10 train pool embeds 50,000 images first). Embeddings are cached under
``--output``, so a second run only re-reads them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))

CIFAR = "parquet:{root}/cifar10/test.parquet"
CASES = {  # name -> (sweep arguments, true K)
    "digits": (["--benchmark", "digits"], 10),
    "cifar10-test": (["--benchmark", CIFAR], 10),
    "cifar10-test-3": (["--benchmark", CIFAR, "--classes", "0,1,2"], 3),
    "cifar10-test-5": (["--benchmark", CIFAR, "--classes", "0,1,2,3,4"], 5),
    "cifar10-test-7": (["--benchmark", CIFAR, "--classes", "0,1,2,3,4,5,6"], 7),
    "gcd-digits": (["--benchmark", "digits", "--setting", "gcd"], 10),
    "gcd-cifar10-train": (["--benchmark", CIFAR.replace("test", "train"), "--setting", "gcd"], 10),
}
DEV_SUBSETS = ([0, 1], [2, 3], [0, 1, 2], [1, 3, 4], [0, 2, 4], [0, 1, 2, 3], [1, 2, 3, 4])
DEV_SUBSETS += ([0, 1, 2, 3, 4],)


def kmeans_criteria(feats: np.ndarray, hi: int) -> dict[str, int]:
    """K̂ by two classic k-means criteria over K = 2..hi (the alternatives the eigengap is
    compared with): the cosine silhouette (on a fixed 2,000-row sample) and Calinski-Harabasz,
    each maximised."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, silhouette_score

    scores: dict[str, dict[int, float]] = {"silhouette": {}, "Calinski-Harabasz": {}}
    for k in range(2, hi + 1):
        pred = KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(feats)
        scores["silhouette"][k] = silhouette_score(
            feats, pred, metric="cosine", sample_size=min(2000, len(feats)), random_state=0
        )
        scores["Calinski-Harabasz"][k] = calinski_harabasz_score(feats, pred)
    return {name: max(s, key=s.get) for name, s in scores.items()}


def dev(args: argparse.Namespace) -> None:
    from dev_defaults import load_dev_set

    from deepclust.knn import knn_self
    from deepclust.num_clusters import estimate_k

    data = load_dev_set(args.cache, args.data_root, args.n)
    graphs = (10, 20, 50)
    names = [f"K̂ ({g}-NN graph)" for g in graphs] + ["K̂ (silhouette)", "K̂ (Calinski-Harabasz)"]
    print("| dev classes | true K | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    errors: list[list[float]] = [[] for _ in names]
    for classes in DEV_SUBSETS:
        rows = np.isin(data["labels"], classes)
        feats = data["feats"][rows]
        nbr = knn_self(feats, 50)[0]
        ks = [estimate_k(feats, nbr, hi=15, graph_k=g).k for g in graphs]
        ks += list(kmeans_criteria(feats, hi=15).values())
        for errs, k in zip(errors, ks, strict=True):
            errs.append(abs(k - len(classes)) / len(classes))
        cells = " | ".join(str(k) for k in ks)
        print(f"| {','.join(map(str, classes))} | {len(classes)} | {cells} |", flush=True)
    means = " | ".join(f"{100 * np.mean(e):.0f}%" for e in errors)
    print(f"| mean relative error | | {means} |")


def sweep(args: argparse.Namespace, case_args: list[str], extra: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "orchestrator.sweep", *case_args, *extra,
        "--methods", args.methods, "--budget", "0", "--seeds", "0",
        "--output", str(args.output),
    ]  # fmt: skip
    cmd = [c.format(root=args.benchmarks_root) for c in cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: a degenerate run, still in the leaderboard
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    print(f"  {' '.join(cmd[3:])}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return json.loads((args.output / "leaderboard.json").read_text())


def measure(args: argparse.Namespace) -> None:
    methods = args.methods.split(",")
    head = " | ".join(f"{m} ACC K̂ / K" for m in methods)
    print(f"| case | true K | K̂ | rel. error | {head} |")
    print("|---|---|---|---|" + "---|" * len(methods))
    for name in args.cases.split(","):
        case_args, true_k = CASES[name]
        gcd = "--setting" in case_args
        auto = sweep(args, case_args, ["--num-clusters", "auto"])
        known = sweep(args, case_args, [])
        setting = "gcd" if gcd else "clustering"

        bench_name = case_args[1].format(root=args.benchmarks_root)
        if "--classes" in case_args:
            bench_name += f"[classes={case_args[case_args.index('--classes') + 1]}]"

        def rows(table, benchmark, setting=setting):
            return {
                r["method"]: r
                for r in table
                if r["setting"] == setting and r["benchmark"] == benchmark and not r["oracle"]
            }

        with_hat, with_k = rows(auto, bench_name + "[K=auto]"), rows(known, bench_name)
        k_hat = int(next(iter(with_hat.values()))["num_clusters"])
        accs = " | ".join(
            f"{100 * with_hat[m]['acc']:.2f} / {100 * with_k[m]['acc']:.2f}" for m in methods
        )
        err = abs(k_hat - true_k) / true_k
        print(f"| {name} | {true_k} | {k_hat} | {100 * err:.0f}% | {accs} |", flush=True)


def main() -> None:
    from dev_defaults import add_dev_set_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dev", action="store_true", help="the graph-size comparison on dev data")
    add_dev_set_arguments(p)
    p.add_argument("--output", type=Path, default=Path("/tmp/unic_num_clusters_bench"))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--methods", default="kmeans,unic")
    p.add_argument(
        "--benchmarks-root",
        default="../shared/data",
        help="where the sweep finds cifar10/test.parquet, as the sweep is given it (relative to "
        "the repository root: benchmark names, and so cache keys, keep the path as written)",
    )
    args = p.parse_args()
    args.output = args.output.resolve()
    dev(args) if args.dev else measure(args)


if __name__ == "__main__":
    main()
