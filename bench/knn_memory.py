"""Peak RSS of streaming kNN mining next to the memory formula (deepclust.knn_stream).

    python bench/knn_memory.py                    # N=200,000, d=768, k=50 (~15 min on 2 cores)
    python bench/knn_memory.py --n 5000           # quick check
    python bench/knn_memory.py --n 20000 --budget-mib 64
    python bench/knn_memory.py --queries 10257    # N=200k peak in ~1/20 of the time

A fresh subprocess writes N random unit vectors blockwise to a temporary .npy (1,024 rows at a
time, never all in memory), records its RSS after importing numpy/torch/deepclust and one tiny
matmul + topk (the reference: the interpreter/torch baseline B0), and mines the file with
``mine_knn_npy``. This process reports the subprocess's peak RSS (getrusage RUSAGE_CHILDREN
ru_maxrss), the working set (peak - baseline) and the formula's prediction (the numbers
``plan_blocks`` uses to choose the blocks), the wall time, and checks 8 random rows against an
exact float64 search. This process never imports torch: a child's ru_maxrss starts from the
parent's RSS at spawn time (Linux keeps the high-water mark of the pre-exec memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's deepclust, whatever is installed
MIB = 2**20


def rss_kib() -> int:
    """Current resident set size of this process (KiB, from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def random_unit_blocks(n: int, d: int, seed: int, rows: int = 1024) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, n, rows):
        block = rng.standard_normal((min(rows, n - start), d), dtype=np.float32)
        yield block / np.linalg.norm(block, axis=1, keepdims=True)


def child(args: argparse.Namespace) -> None:
    """Runs in the measured subprocess: baseline RSS, then the mining; prints one JSON line."""
    import torch

    from deepclust.knn_stream import mine_knn_npy, plan_blocks, write_features_npy

    path = Path(args.child)
    t0 = time.perf_counter()
    write_features_npy(path, random_unit_blocks(args.n, args.d, seed=0))
    write_seconds = time.perf_counter() - t0
    a = torch.ones(8, 8)
    (a @ a.T).topk(2, dim=1)  # torch's lazy per-process init belongs to the baseline
    baseline_kib = rss_kib()
    out = path.parent
    budget = args.budget_mib * MIB
    t0 = time.perf_counter()
    stop = min(args.queries or args.n, args.n)
    stats = mine_knn_npy(
        args.child, args.k, out / "ids.npy", out / "sims.npy", stop=stop, memory_budget=budget
    )
    seconds = time.perf_counter() - t0
    plan = plan_blocks(stats.n, stats.d, args.k, nq=stop, memory_budget=budget)
    result = {
        "baseline_kib": baseline_kib,
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "seconds": seconds,
        "write_seconds": write_seconds,
        "file_mib": path.stat().st_size / MIB,
        "rows": stats.rows,
        "bq": plan.bq,
        "bd": plan.bd,
        "threads": plan.threads,
        "predicted_bytes": plan.predicted_peak_bytes,
        "terms": plan.terms,
    }
    print(json.dumps(result))


def exact_rows(path: Path, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k (float64, self excluded, index asc on ties) of ``rows`` (numpy only)."""
    x = np.load(path, mmap_mode="r")
    q = np.asarray(x[rows], dtype=np.float64)
    sims = np.concatenate(
        [q @ np.asarray(x[s : s + 16384], np.float64).T for s in range(0, len(x), 16384)], 1
    )
    sims[np.arange(len(rows)), rows] = -np.inf
    return np.stack([np.lexsort((np.arange(len(r)), -r))[:k] for r in sims])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--budget-mib", type=int, default=512, help="memory_budget of the mining")
    p.add_argument(
        "--queries",
        type=int,
        default=0,
        help="mine only query rows [0, Q) against all N (0: all). The peak is reached in the "
        "first query block, so Q = one block (bq) shows the full run's peak in ~bq/N of its time",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        sys.stdout.flush()
        # skip interpreter teardown: with torch loaded it touches ~130 MB more than the mining
        # (measured: `import torch` peaks at 519 MB with os._exit, 646 MB with a normal exit)
        os._exit(0)
    with tempfile.TemporaryDirectory(prefix="knn_memory_") as tmp:
        path = Path(tmp) / "features.npy"
        print(
            f"subprocess: write {args.n} x {args.d} random unit vectors, then mine k={args.k} "
            f"(memory_budget {args.budget_mib} MiB)"
        )
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        cmd = [sys.executable, __file__, "--child", str(path), "--n", str(args.n)]
        cmd += ["--d", str(args.d), "--k", str(args.k), "--budget-mib", str(args.budget_mib)]
        cmd += ["--queries", str(args.queries)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"mining subprocess failed:\n{proc.stderr}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ids = np.load(Path(tmp) / "ids.npy", mmap_mode="r")
        nq = len(ids)
        sample = np.random.default_rng(1).choice(nq, size=min(8, nq), replace=False)
        agree = np.array_equal(np.asarray(ids[sample]), exact_rows(path, sample, args.k))

    base = r["baseline_kib"] * 1024
    peak = peak_kib * 1024
    pred = r["predicted_bytes"]
    print(
        f"blocks: bq={r['bq']} query rows x bd={r['bd']} database rows, {r['threads']} threads; "
        f"{r['rows']} of {args.n} query rows mined"
    )
    print("formula terms (MiB): " + ", ".join(f"{k}={v / MIB:.1f}" for k, v in r["terms"].items()))
    rows = [
        ("baseline RSS after imports (reference)", base / MIB, ""),
        ("peak RSS of the mining subprocess", peak / MIB, f"x{peak / base:.2f} of baseline"),
        ("measured working set (peak - baseline)", (peak - base) / MIB, ""),
        (
            "predicted working set (formula)",
            pred / MIB,
            f"measured/predicted {(peak - base) / pred:.2f}",
        ),
        (
            "predicted peak (baseline + formula)",
            (base + pred) / MIB,
            f"measured/predicted {peak / (base + pred):.2f}",
        ),
    ]
    for name, mib, note in rows:
        print(f"{name:<42} {mib:>9.1f} MiB  {note}")
    print(
        f"mining wall time {r['seconds']:.1f}s (writing the {r['file_mib']:.0f} MiB file "
        f"{r['write_seconds']:.1f}s; subprocess {wall:.1f}s incl. imports)"
    )
    print(f"8 sampled rows equal an exact float64 search: {agree}")


if __name__ == "__main__":
    main()
