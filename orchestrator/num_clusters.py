"""``--num-clusters N|auto``: the number of clusters every method of a benchmark finds.

``auto`` estimates K once per benchmark in the driver (deepclust/num_clusters.py): without
labels for clustering (the kNN graph's eigengap), from the labelled images in GCD (GCD's
Brent search). The estimate is cached as a small JSON artifact keyed by what it read (the
embeddings, the kNN table or the GCD split), so a rerun or a resumed sweep reuses it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from deepclust.artifacts import stable_key
from deepclust.num_clusters import KEstimate, estimate_k, estimate_k_gcd

log = logging.getLogger(__name__)


def resolve_num_clusters(ctx) -> dict[str, Any]:
    """``BenchmarkContext`` fields for ``ctx.settings.num_clusters``: ``num_clusters`` and,
    for ``auto``, ``k_estimate`` (the estimate's record)."""
    asked = ctx.settings.num_clusters
    if asked != "auto":
        return {"num_clusters": int(asked)}
    est = _cached_estimate(ctx)
    truth = ctx.splits.fit.num_classes
    log.info(
        "%s: K̂=%d clusters (%s over K in %d..%d)%s",
        ctx.splits.name,
        est["k"],
        est["criterion"],
        *est["bounds"],
        f"; the labels have {truth} classes (not used to choose)" if truth else "",
    )
    return {"num_clusters": int(est["k"]), "k_estimate": est}


def _cached_estimate(ctx) -> dict[str, Any]:
    gcd = ctx.gcd
    identity = {
        "embeddings": ctx.fit_emb.meta["key"],
        "neighbors": ctx.neighbors_meta["key"],
        "gcd_split": gcd.key if gcd else None,
        "version": 2,
    }
    path = ctx.store.root / "artifacts" / "num_clusters" / f"{stable_key(identity)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # damaged: estimated again below
    estimate = _estimate(ctx)
    record = estimate.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return record


def _estimate(ctx) -> KEstimate:
    feats = ctx.fit_emb.features
    if ctx.gcd is not None:
        split = ctx.gcd.split
        log.info("%s: estimating K from the labelled images (GCD)", ctx.splits.name)
        return estimate_k_gcd(feats, split.labelled_idx, split.labelled_y)
    log.info("%s: estimating K without labels", ctx.splits.name)
    return estimate_k(feats, ctx.neighbors)
