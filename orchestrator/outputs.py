"""What a user looks at after a benchmark's runs: per method, the assignments file, the HTML
gallery and the 2-D map of its first seed's run (deepclust/gallery.py), written by the driver
(it holds the images) into the run's folder, and the assignments copied next to the
leaderboard (``OUTPUT/assignments/<benchmark>/<method>-<config>.csv``).

Cached runs whose folder already holds the three files are left as they are; the 2-D layout is
computed once per benchmark (``artifacts/maps/<embeddings key>.npz``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from deepclust import gallery
from deepclust.artifacts import _slug

log = logging.getLogger(__name__)

ASSIGNMENTS, GALLERY, MAP = "assignments.csv", "gallery.html", "map.png"


def assignments_path(root: Path, result: dict[str, Any]) -> Path:
    """Where a run's assignments are copied next to the leaderboard."""
    oracle = "-oracle" if result.get("oracle") else ""
    name = f"{result['method']}-{result['config_hash']}{oracle}.csv"
    setting = "" if result.get("setting", "clustering") == "clustering" else "-gcd"
    return root / "assignments" / _slug(result["benchmark"] + setting) / name


def _run_dir(ctx, result: dict[str, Any]) -> Path:
    """The run's folder under this store (a run's ``run_dir`` names where it was written,
    which a copied or moved output folder no longer is)."""
    from orchestrator.pipeline import run_variant  # this module is imported by pipeline

    gcd = result.get("setting") == "gcd"
    variant = run_variant(result["method"], result["config_hash"], gcd)
    oracle = bool(result.get("oracle"))
    return ctx.store.run_dir(
        result["benchmark"], result["backbone"], variant, result["seed"], oracle
    )


def _confidence_neighbors(ctx) -> np.ndarray:
    """The eval split's CONFIDENCE_K nearest neighbours: the mined table's first columns when
    the eval split is the fit split (mined with the same exact search), else computed once."""
    k = gallery.CONFIDENCE_K
    if ctx.eval_emb is ctx.fit_emb and ctx.neighbors.shape[1] >= k:
        return ctx.neighbors[:, :k]
    return gallery.confidence_neighbors(ctx.eval_emb.features, k)


def _layout(ctx) -> tuple[np.ndarray, np.ndarray]:
    """The eval split's 2-D layout, cached by its embeddings' key (one t-SNE per benchmark)."""
    path = ctx.store.root / "artifacts" / "maps" / f"{ctx.eval_emb.meta['key']}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        with np.load(path) as f:
            if len(f["rows"]) and f["rows"].max() < len(ctx.eval_emb.labels):
                return f["rows"], f["xy"]
    rows, xy = gallery.map_layout(ctx.eval_emb.features)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, rows=rows, xy=xy)
    tmp.replace(path)
    return rows, xy


def write_outputs(ctx, results: list[dict[str, Any]]) -> list[Path]:
    """Assignments, gallery and map of each method's lowest-seed run in ``results`` (a
    finetune subset run, which scores fewer rows than the split holds, is skipped). Returns
    the galleries written."""
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        first.setdefault((r["method"], r["config_hash"]), r)
    images = ctx.splits.eval
    n = len(ctx.eval_emb.labels)
    written, layout, neighbors = [], None, None
    for r in first.values():
        run_dir = _run_dir(ctx, r)
        files = [run_dir / f for f in (ASSIGNMENTS, GALLERY, MAP)]
        copy = assignments_path(ctx.store.root, r)
        if all(f.is_file() for f in files):
            if not copy.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files[0], copy)
            continue
        pred = pq.read_table(run_dir / "predictions.parquet").column("cluster").to_numpy()
        if len(pred) != n or not len(images):
            continue
        if neighbors is None:  # one kNN table for every method's confidence
            neighbors = _confidence_neighbors(ctx)
        conf = gallery.confidence(pred, neighbors)
        gallery.write_assignments(files[0], pred, conf, images.describe)
        labels = ctx.eval_emb.labels if images.labelled else None
        summary = gallery.cluster_summary(
            pred, conf, int(r["num_clusters"]), labels, images.class_names
        )
        title = f"{r['method']} on {r['benchmark']} (seed {r['seed']})"
        k = f"K̂={r['num_clusters']}" if r.get("k_estimate") else f"K={r['num_clusters']}"
        subtitle = (
            f"{n} images, {k}; confidence: the share of an image's {gallery.CONFIDENCE_K} "
            "nearest neighbours in its cluster"
        )
        if "acc" in r:
            subtitle += f"; ACC {100 * r['acc']:.2f}"
        gallery.write_gallery(
            files[1], title, summary, images.source_item, images.describe, subtitle
        )
        if layout is None:
            layout = _layout(ctx)
        gallery.write_map(files[2], layout[0], layout[1], pred, title)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[0], copy)
        written.append(files[1])
    if written:
        log.info(
            "%s: %d cluster galleries (gallery.html, map.png in each run folder, e.g. %s); "
            "assignments in %s",
            ctx.splits.name,
            len(written),
            written[0],
            ctx.store.root / "assignments",
        )
    return written
