"""Leaderboard: every ``runs/**/metrics.json`` -> one table (Markdown, CSV, JSON).

Rows are (setting, benchmark, backbone, method, config) with metrics averaged over seeds (mean
and std), the label-free objective that selected the config, and the neighbour precision of the
mined kNN graph as a diagnostic. GCD rows report All accuracy (v2, on the unlabelled pool) as
ACC, plus Old / New.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepclust.artifacts import ArtifactStore

METRICS = ("acc", "nmi", "ari")
GCD_METRICS = ("acc_old", "acc_new")  # GCD rows: acc is All accuracy (v2) on the unlabelled pool
GROUP = ("setting", "benchmark", "backbone", "method", "config_hash")


def collect_runs(store: ArtifactStore) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(store.runs_root().glob("**/metrics.json")):
        result = ArtifactStore.read_run(path.parent)
        if result is not None:
            runs.append(result)
    return runs


def build_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (benchmark, backbone, method, config): mean/std over seeds."""
    if not runs:
        return pd.DataFrame(columns=[*GROUP, "seeds", *METRICS])
    df = pd.DataFrame(runs)
    df["setting"] = df["setting"].fillna("clustering") if "setting" in df else "clustering"
    rows = []
    for keys, group in df.groupby(list(GROUP), sort=True):
        row: dict[str, Any] = dict(zip(GROUP, keys, strict=True))
        row["seeds"] = len(group)
        for m in METRICS:
            row[m] = float(group[m].mean())
            row[f"{m}_std"] = float(group[m].std(ddof=0)) if len(group) > 1 else 0.0
        for m in GCD_METRICS:
            if m in group and group[m].notna().any():
                row[m] = float(group[m].mean())
                row[f"{m}_std"] = float(group[m].std(ddof=0)) if len(group) > 1 else 0.0
        nbr_cols = sorted(c for c in group.columns if c.startswith("nbr_precision@"))
        for c in nbr_cols:
            row[c] = float(group[c].mean())
        # wall seconds per run, a staged method's parent stage included
        # (runs written by older versions carry no timing: shown as "-")
        nan = pd.Series(np.nan, index=group.index)
        own = group["seconds"] if "seconds" in group else nan
        total = group["seconds_total"] if "seconds_total" in group else nan
        row["seconds"] = float(total.fillna(own).mean())
        row["objective"] = group["objective"].iloc[0]
        row["n_eval"] = int(group["n_eval"].iloc[0])
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(
        ["setting", "benchmark", "acc"], ascending=[True, True, False]
    ).reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    cols = [
        "setting",
        "benchmark",
        "backbone",
        "method",
        "seeds",
        "ACC",
        "NMI",
        "ARI",
        "GCD Old / New",
        "kNN prec@20",
        "s/run",
        "objective",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():

        def fmt(m: str, r=r) -> str:
            if r["seeds"] > 1:
                return f"{100 * r[m]:.2f} ± {100 * r[m + '_std']:.2f}"
            return f"{100 * r[m]:.2f}"

        prec = r.get("nbr_precision@20", np.nan)
        old_new = "-"
        if not pd.isna(r.get("acc_old", np.nan)):
            old_new = f"{100 * r['acc_old']:.2f} / {100 * r['acc_new']:.2f}"
        cells = [
            r["setting"],
            r["benchmark"],
            r["backbone"],
            r["method"],
            str(r["seeds"]),
            fmt("acc"),
            fmt("nmi"),
            fmt("ari"),
            old_new,
            "-" if pd.isna(prec) else f"{100 * prec:.2f}",
            "-" if pd.isna(r["seconds"]) else f"{r['seconds']:.0f}",
            r["objective"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(store: ArtifactStore) -> tuple[pd.DataFrame, str]:
    """Rebuild the leaderboard files from all runs under the store; return (table, markdown)."""
    table = build_table(collect_runs(store))
    markdown = to_markdown(table)
    store.root.mkdir(parents=True, exist_ok=True)
    store.leaderboard_path("md").write_text(markdown)
    table.to_csv(store.leaderboard_path("csv"), index=False)
    store.leaderboard_path("json").write_text(
        json.dumps(table.to_dict(orient="records"), indent=2, default=str)
    )
    return table, markdown


def leaderboard_files(store: ArtifactStore) -> list[Path]:
    return [store.leaderboard_path(s) for s in ("md", "csv", "json")]
