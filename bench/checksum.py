"""Cost of verifying a cached artifact's checksums, against reading it.

    python bench/checksum.py                 # 50,000 x 1280 float32: CIFAR-10 train's size
    python bench/checksum.py --rows 10000

Writes an embeddings artifact the size of the CIFAR-10 train split under the default backbone
(50,000 rows of 1,280 float32: ~245 MiB of Parquet; random unit vectors, which compress as
little as real embeddings) to a temp folder, then times, best of 3 runs each,
``ArtifactStore.check`` (sizes and SHA-256 of every file: what every reuse pays) and
``ArtifactStore.read_embeddings`` (what every reuse then reads), and prints the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))

from deepclust.artifacts import ArtifactStore  # noqa: E402


def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1280)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        store = ArtifactStore(Path(root))
        d = store.embeddings_dir("bench", "train", "b")
        tmp = store.begin(d)
        x = np.random.default_rng(0).normal(size=(args.rows, args.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        table = pa.table(
            {
                "idx": np.arange(args.rows),
                "label": np.arange(args.rows) % 10,
                "embedding": pa.FixedSizeListArray.from_arrays(x.ravel(), args.dim),
            }
        )
        pq.write_table(table, tmp / "part-0.parquet")
        store.commit(tmp, d, "key", rows=args.rows)
        mib = sum(p.stat().st_size for p in d.glob("*.parquet")) / 2**20
        check = best(lambda: store.check(d, "key"))
        read = best(lambda: store.read_embeddings(d))
        print(f"{args.rows} x {args.dim} embeddings, {mib:.0f} MiB of Parquet")
        print(f"check (sizes + SHA-256): {check:.3f} s ({mib / check:.0f} MiB/s)")
        print(f"read_embeddings:         {read:.3f} s")
        print(f"check / read = {check / read:.2f}")


if __name__ == "__main__":
    main()
