"""Leaderboard plots (PNG, matplotlib's Agg backend: no display needed).

* ``leaderboard_acc.png``: ACC (mean ± std over seeds) per method, one group of bars per
  (setting, benchmark); the best row of each method.
* ``unic_k.png``: UNIC against its positive-neighbour count: left, ACC of every UNIC run in
  the store; right, the search objective of every UNIC trial (what the search saw).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepclust.artifacts import ArtifactStore

WORST = 1e9  # trainables.objective.WORST (not imported: plots stay torch-free)

log = logging.getLogger(__name__)


def plot_paths(store: ArtifactStore) -> list[Path]:
    return [store.root / "leaderboard_acc.png", store.root / "unic_k.png"]


def _unic_trials(store: ArtifactStore) -> list[tuple[int, float, str]]:
    """(pos_k, objective, metric) of every finished UNIC trial under tune/."""
    out = []
    for params in sorted((store.root / "tune").glob("unic-*/*/params.json")):
        result = params.with_name("result.json")
        if not result.is_file():
            continue
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        if not lines:
            continue
        last = json.loads(lines[-1])
        config = json.loads(params.read_text())
        metric = next((m for m in ("selection_score", "val_acc", "oracle_acc") if m in last), None)
        # degenerate trials carry the worst finite value (trainables.objective.WORST): omitted
        if metric and "pos_k" in config and abs(float(last[metric])) < WORST:
            out.append((int(config["pos_k"]), float(last[metric]), metric))
    return out


def write_plots(store: ArtifactStore, table: pd.DataFrame, runs: list[dict[str, Any]]) -> None:
    """Write the PNGs for ``table`` (rows as build_table makes them); no rows, no plots."""
    if table.empty:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = table.sort_values("acc", ascending=False).drop_duplicates(
        ["setting", "benchmark", "backbone", "method"]
    )
    groups = sorted({(r.setting, r.benchmark, r.backbone) for r in best.itertuples()})
    methods = sorted(best["method"].unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(methods) / 2), 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        rows = [
            best[
                (best.method == method)
                & (best.setting == s)
                & (best.benchmark == b)
                & (best.backbone == k)
            ]
            for s, b, k in groups
        ]
        acc = [100 * r["acc"].iloc[0] if len(r) else np.nan for r in rows]
        std = [100 * r["acc_std"].iloc[0] if len(r) else 0.0 for r in rows]
        ax.bar(np.arange(len(groups)) + i * width, acc, width, yerr=std, label=method, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{b}\n{s}" for s, b, _ in groups], fontsize=8)
    ax.set_ylabel("ACC (%)")
    ax.set_title("Clustering accuracy (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(plot_paths(store)[0], dpi=120)
    plt.close(fig)

    unic_runs = [
        (r["diagnostics"].get("pos_k") or r["config"].get("pos_k"), r["acc"], r["benchmark"])
        for r in runs
        if r.get("method") == "unic" and isinstance(r.get("diagnostics"), dict)
    ]
    unic_runs = [u for u in unic_runs if u[0] is not None]
    trials = _unic_trials(store)
    if not unic_runs and not trials:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for bench in sorted({b for _, _, b in unic_runs}):
        pts = sorted((k, a) for k, a, b in unic_runs if b == bench)
        left.plot([k for k, _ in pts], [100 * a for _, a in pts], "o", label=bench)
    left.set_xlabel("positive neighbours (pos_k)")
    left.set_ylabel("ACC (%)")
    left.set_title("UNIC runs")
    if unic_runs:
        left.legend(fontsize=7)
    for metric in sorted({m for _, _, m in trials}):
        pts = [(k, v) for k, v, m in trials if m == metric]
        right.plot([k for k, _ in pts], [v for _, v in pts], "x", label=metric)
    right.set_xlabel("positive neighbours (pos_k)")
    right.set_ylabel("search objective")
    right.set_title("UNIC trials (degenerate ones omitted)")
    if trials:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot_paths(store)[1], dpi=120)
    plt.close(fig)
