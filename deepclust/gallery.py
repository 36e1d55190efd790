"""Clusters as pictures: a run's assignments file, its HTML gallery and a 2-D map.

* :func:`confidence`: a label-free, method-independent confidence per image: the share of its
  ``k`` nearest neighbours (cosine, in the embedding space every method clustered) that sit in
  its own cluster. A k-means row and a UNIC row are read the same way; 1.0 = the image's whole
  neighbourhood agrees.
* :func:`write_assignments`: one CSV row per image: ``image_id`` (the row index), ``source``
  (a file path, or a Parquet file and row), ``cluster``, ``confidence``.
* :func:`write_gallery`: one self-contained HTML file (thumbnails embedded as base64 PNG, no
  server, no script): per cluster its size, mean confidence, its most and least confident
  images, and where labels exist its majority class and purity.
* :func:`write_map`: a PNG of a 2-D layout of the embeddings (t-SNE of a fixed sample of at
  most ``MAP_POINTS`` rows) coloured by cluster.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CONFIDENCE_K = 10  # neighbours per image for the confidence
SHOWN_TOP, SHOWN_LOW = 8, 4  # most / least confident thumbnails per cluster
THUMB = 64  # thumbnail side, pixels
MAP_POINTS = 2000  # rows of the 2-D map (a fixed sample above that)

# one colour per cluster (cycled past 20), the same in the gallery's headers and the map
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#a55194",
    "#6b6ecf", "#b5cf6b", "#e7ba52", "#3182bd",
)  # fmt: skip


def cluster_color(c: int) -> str:
    return PALETTE[c % len(PALETTE)]


def confidence_neighbors(features: np.ndarray, k: int = CONFIDENCE_K) -> np.ndarray:
    """(N, min(k, N - 1)) int64 nearest neighbours of each row (self excluded) of (N, D)
    unit-norm ``features``: what :func:`confidence` reads, the same for every method that
    clusters these features."""
    from deepclust.knn import knn_self

    x = np.ascontiguousarray(features, dtype=np.float32)
    if len(x) < 2:
        return np.zeros((len(x), 0), dtype=np.int64)
    return knn_self(x, min(k, len(x) - 1))[0]


def confidence(pred: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """(N,) share of each row's nearest ``neighbors`` (N, k) (:func:`confidence_neighbors`) in
    its own cluster ``pred`` (N,); 1 for a row without neighbours."""
    if neighbors.shape[1] == 0:
        return np.ones(len(pred))
    return (pred[neighbors] == pred[:, None]).mean(1)


def write_assignments(
    path: Path, pred: np.ndarray, conf: np.ndarray, describe: Callable[[int], str]
) -> None:
    """The assignments CSV (see the module docstring); ``describe(i)``: image i's source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "source", "cluster", "confidence"])
        for i, (c, s) in enumerate(zip(pred, conf, strict=True)):
            w.writerow([i, describe(i), int(c), f"{s:.3f}"])
    tmp.replace(path)


def cluster_summary(
    pred: np.ndarray,
    conf: np.ndarray,
    num_clusters: int,
    labels: np.ndarray | None = None,
    class_names: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Per cluster id 0..K-1: size, mean confidence, the most / least confident rows and, with
    labels, the majority class and purity (its share of the cluster)."""
    out = []
    for c in range(num_clusters):
        rows = np.flatnonzero(pred == c)
        order = rows[np.lexsort((rows, -conf[rows]))]  # most confident first, ties by row
        item: dict[str, Any] = {
            "cluster": c,
            "size": len(rows),
            "mean_confidence": float(conf[rows].mean()) if len(rows) else float("nan"),
            "top": order[:SHOWN_TOP].tolist(),
            "low": order[::-1][:SHOWN_LOW].tolist() if len(rows) > SHOWN_TOP else [],
        }
        if labels is not None and len(rows):
            counts = np.bincount(labels[rows])
            major = int(counts.argmax())
            item["majority"] = class_names[major] if major < len(class_names) else str(major)
            item["purity"] = float(counts[major] / len(rows))
        out.append(item)
    return out


def thumbnail(source: Any) -> str:
    """A ``data:`` URI of a THUMB x THUMB PNG of an image source (bytes, path or array)."""
    from PIL import Image, ImageOps

    from deepclust.preprocess import open_image, to_8bit

    try:
        img = to_8bit(open_image(source))
    except Exception:  # noqa: BLE001 - an unreadable image shows as a grey square
        img = Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    # up or down to fit (tiny images, e.g. 8x8 digits, are enlarged with their pixels kept)
    small = max(img.size) < THUMB // 2
    img = ImageOps.contain(img, (THUMB, THUMB), Image.NEAREST if small else Image.BICUBIC)
    canvas = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    canvas.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px} .meta{color:#555;margin-bottom:12px}
.cluster{background:#fff;border:1px solid #ddd;margin:0 0 12px 0;border-radius:4px}
.head{color:#fff;padding:6px 10px;font-weight:bold}
.body{padding:8px 10px} .row{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0}
.row img{width:64px;height:64px;border:1px solid #ccc;image-rendering:pixelated}
.label{font-size:12px;color:#666;margin-top:4px}
"""


def write_gallery(
    path: Path,
    title: str,
    summary: list[dict[str, Any]],
    source_item: Callable[[int], Any],
    describe: Callable[[int], str],
    subtitle: str = "",
) -> None:
    """One self-contained HTML file: a section per cluster (``summary`` of
    :func:`cluster_summary`), its header in the cluster's colour."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><div class='meta'>{html.escape(subtitle)}</div>",
    ]
    for item in summary:
        c = item["cluster"]
        head = f"cluster {c}: {item['size']} images"
        if item["size"]:
            head += f", mean confidence {item['mean_confidence']:.2f}"
        if "majority" in item:
            head += f", majority class {item['majority']} (purity {item['purity']:.0%})"
        parts.append(
            f"<div class='cluster' id='cluster-{c}'><div class='head' "
            f"style='background:{cluster_color(c)}'>{html.escape(head)}</div><div class='body'>"
        )
        for key, label in (("top", "most confident"), ("low", "least confident")):
            if not item[key]:
                continue
            imgs = "".join(
                f"<img src='{thumbnail(source_item(i))}' title='{html.escape(describe(i))}' "
                f"alt='image {i}'>"
                for i in item[key]
            )
            parts.append(f"<div class='label'>{label}</div><div class='row'>{imgs}</div>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(path)


def map_layout(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, (n, 2) coordinates): a t-SNE layout of a fixed sample of at most MAP_POINTS rows
    (PCA to 50 dimensions first). The same for every run of a benchmark: compute it once."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    rows = np.arange(n)
    if n > MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(n, MAP_POINTS, replace=False))
    x = np.asarray(features[rows], dtype=np.float32)
    if len(rows) < 4:
        return rows, np.zeros((len(rows), 2), np.float32)
    if x.shape[1] > 50 and len(rows) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(rows) - 1) // 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return rows, xy.astype(np.float32)


def write_map(path: Path, rows: np.ndarray, xy: np.ndarray, pred: np.ndarray, title: str) -> None:
    """The 2-D map PNG: the layout's points coloured by their cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = [cluster_color(int(c)) for c in pred[rows]]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=6, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
