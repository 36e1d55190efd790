"""Peak RSS of the sweep's driver process on a Parquet benchmark of 2,000 and of 20,000 images.

    python bench/driver_memory.py                       # 2,000 vs 20,000 images (~6 min, 2 cores)
    python bench/driver_memory.py --small 500 --large 5000   # quick check

Each size is a synthetic Parquet file (64x64 noisy JPEGs of about 10 KB, a binary ``image`` column and an int
``label`` column, 10 classes) written by a subprocess into a temporary folder. The product's
sweep then runs in a fresh subprocess per size::

    python -m orchestrator.sweep --benchmark parquet:<file> --methods kmeans --budget 0
        --seeds 0 --output <tmp>

(embedding + mining + k-means), through a wrapper that prints the process's own
``getrusage(RUSAGE_SELF).ru_maxrss`` when ``main`` returns: the driver alone, not the Ray
workers (they are other processes) but including object-store pages the driver touched. The
reference is the small benchmark's peak, measured in the same run; the ratio large/small shows
whether the driver's memory grows with the dataset (target: below 1.5). This process imports
nothing heavy, so the children's high-water marks do not start from its RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIB = 1024

WRITE = """
import io, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
writer = None
for start in range(0, n, 1000):  # blockwise: one row group per 1,000 images
    rows = range(start, min(start + 1000, n))
    labels = np.asarray([i % 10 for i in rows], dtype=np.int64)
    images = []
    for y in labels:
        base = np.full((64, 64, 3), 20 * y, dtype=np.int16)
        noise = rng.integers(0, 200, (64, 64, 3), dtype=np.int16)
        buf = io.BytesIO()
        pixels = (base + noise).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG", quality=95, subsampling=0)
        images.append(buf.getvalue())
    table = pa.table({"image": pa.array(images, pa.binary()), "label": labels})
    writer = writer or pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
writer.close()
"""

MEASURE = """
import json, resource, sys, time
from orchestrator.sweep import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def write_benchmark(path: Path, n: int) -> None:
    subprocess.run([sys.executable, "-c", WRITE, str(path), str(n)], check=True)


def driver_peak(parquet: Path, output: Path, cwd: Path) -> dict:
    """Run the sweep in a fresh interpreter; its own peak RSS and wall time."""
    argv = [
        "--benchmark",
        f"parquet:{parquet}",
        "--methods",
        "kmeans",
        "--budget",
        "0",
        "--seeds",
        "0",
        "--output",
        str(output),
    ]
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    if proc.returncode != 0 or not last[0].startswith("{"):
        sys.exit(f"sweep failed on {parquet}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(last[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs the sweep")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="driver-mem-") as tmp:
        peaks = {}
        for n in (args.small, args.large):
            parquet = Path(tmp) / f"synthetic{n}.parquet"
            t0 = time.perf_counter()
            write_benchmark(parquet, n)
            size = parquet.stat().st_size / 2**20
            print(f"{n} images: {size:.1f} MiB parquet in {time.perf_counter() - t0:.1f}s")
            peaks[n] = driver_peak(parquet, Path(tmp) / f"out{n}", args.repo.resolve())
            print(
                f"{n} images: driver peak RSS {peaks[n]['maxrss_kib'] / KIB:.0f} MiB "
                f"(sweep {peaks[n]['seconds']:.0f}s)",
                flush=True,
            )
    ratio = peaks[args.large]["maxrss_kib"] / peaks[args.small]["maxrss_kib"]
    print(f"ratio {args.large}/{args.small} driver peak RSS: {ratio:.2f} (target < 1.5)")


if __name__ == "__main__":
    main()
