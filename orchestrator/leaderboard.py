"""Leaderboard: every ``runs/**/metrics.json`` (+ ``tune/*/search.json``) -> one table
(Markdown, CSV, JSON) and PNG plots.

Rows are (setting, benchmark, backbone, method, config, oracle) with metrics averaged over
seeds (mean and std; ACC, balanced ACC, NMI, ARI, none of them for an unlabelled
collection), the number of clusters (K̂ where estimated), the objective that selected the config (a search's metric; else the
method's own label-free criterion), the search's trial count, compute time (search + every
seed's run) and the neighbour precision of the mined kNN graph as a diagnostic. GCD rows report
All accuracy (v2, on the unlabelled pool) as ACC, plus Old / New.

Oracle rows (``--oracle``: test labels ranked the search's trials) never mix with honest ones:
their runs live under ``runs-oracle/`` (ArtifactStore.run_dir), ``oracle`` is part of the row
key, so an oracle search's record joins only oracle rows even when it chose the same config as
an honest search, and every output marks them: the ``oracle`` column (CSV/JSON), ``ORACLE ...``
in the selected-by column and a ``(ORACLE)`` suffix on the method, in a Markdown section of
their own below the honest table. The table lists every row (ordered by ACC for reading); no
summary picks a row by accuracy (the ACC plot's choice: orchestrator/plots.py).

Rebuild everything from the run directories::

    python -m orchestrator.leaderboard results
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepclust.artifacts import ArtifactStore

METRICS = ("acc", "bacc", "nmi", "ari")  # bacc: balanced ACC (mean per-class recall)
GCD_METRICS = ("acc_old", "acc_new")  # GCD rows: acc is All accuracy (v2) on the unlabelled pool
GROUP = ("setting", "benchmark", "backbone", "method", "config_hash", "oracle")
SEARCH_FILE = "search.json"  # written by orchestrator.search when a search's seeds are done
ORACLE_NOTE = "ORACLE rows ranked their trials by test labels: upper bounds, not results."


def _join_key(row: dict[str, Any]) -> tuple:
    """A run's or a search record's GROUP key (oracle as a plain bool: absent is honest)."""
    return tuple(bool(row.get(k)) if k == "oracle" else row.get(k) for k in GROUP)


def collect_records(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every finished search under the store (tune/<experiment>/search.json), oldest first
    (``finished``; a record written before it was kept: the file's mtime)."""
    out = []
    for path in sorted((store.root / "tune").glob(f"*/{SEARCH_FILE}")):
        try:
            record = json.loads(path.read_text())
            record.setdefault("finished", path.stat().st_mtime)
        except (OSError, json.JSONDecodeError):
            continue  # a record being replaced right now: the next rebuild reads it
        out.append(record)
    return sorted(out, key=lambda r: float(r["finished"]))


def collect_runs(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every published run: honest ones (runs/), then oracle ones (runs-oracle/, marked
    ``oracle`` whatever their metrics.json says). Folders being written or replaced (their
    names start with a dot) are never read."""
    runs = []
    for oracle in (False, True):
        root = store.runs_root(oracle)
        for path in sorted(root.glob("**/metrics.json")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            result = ArtifactStore.read_run(path.parent)
            if result is not None:
                runs.append({**result, "oracle": oracle or bool(result.get("oracle"))})
    return runs


def build_table(
    runs: list[dict[str, Any]], searches: list[dict[str, Any]] | None = None
) -> pd.DataFrame:
    """One row per (setting, benchmark, backbone, method, config, oracle): mean/std over
    seeds, joined with the search that chose the config (``searches``: search.json records,
    oldest first; the latest of several that chose the same row wins). ``selected_at``: when
    that search finished (NaN: no search chose the row)."""
    if not runs:
        return pd.DataFrame(
            columns=[*GROUP, "seeds", *METRICS, "trials", "selected_by", "selected_at"]
        )
    df = pd.DataFrame(runs)
    df["setting"] = df["setting"].fillna("clustering") if "setting" in df else "clustering"
    df["oracle"] = df["oracle"].fillna(False).astype(bool) if "oracle" in df else False
    searched = {_join_key(r): r for r in searches or []}
    rows = []
    for keys, group in df.groupby(list(GROUP), sort=True):
        row: dict[str, Any] = dict(zip(GROUP, keys, strict=True))
        row["oracle"] = bool(row["oracle"])
        row["seeds"] = len(group)
        for m in METRICS:  # NaN where not scored (an unlabelled collection)
            values = group[m] if m in group else pd.Series(np.nan, index=group.index)
            row[m] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=0)) if len(group) > 1 else 0.0
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
        flags = group["degenerate"] if "degenerate" in group else pd.Series(False, group.index)
        row["degenerate"] = int(flags.fillna(False).astype(bool).sum())  # seeds collapsed
        row["num_clusters"] = int(group["num_clusters"].iloc[0]) if "num_clusters" in group else 0
        row["num_classes"] = (
            int(group["num_classes"].iloc[0])
            if "num_classes" in group and group["num_classes"].notna().iloc[0]
            else row["num_clusters"]
        )
        estimates = group["k_estimate"] if "k_estimate" in group else None
        row["k_estimated"] = bool(estimates is not None and isinstance(estimates.iloc[0], dict))
        row["objective"] = group["objective"].iloc[0]
        row["n_eval"] = int(group["n_eval"].iloc[0])
        found = searched.get(_join_key(row))
        row["trials"] = int(found["trials"]) if found else 0
        row["selected_by"] = found["selected_by"] if found else row["objective"]
        if row["oracle"] and not str(row["selected_by"]).startswith("ORACLE"):
            # an oracle run no oracle search record names (e.g. a staged oracle run's parent)
            row["selected_by"] = f"ORACLE run ({row['selected_by']})"
        row["selected_at"] = float(found["finished"]) if found else np.nan
        row["compute_s"] = float(total.fillna(own).sum()) + (
            float(found["search_seconds"]) if found else 0.0
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(
        ["oracle", "setting", "benchmark", "acc"], ascending=[True, True, True, False]
    ).reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """The honest rows' table, then (when there are any) the oracle rows in a section of their
    own, each marked ``(ORACLE)`` and ``ORACLE ...`` in the selected-by column."""
    oracle = table["oracle"].astype(bool) if "oracle" in table else pd.Series(False, table.index)
    markdown = _markdown_table(table[~oracle])
    if oracle.any():
        markdown += f"\n## ORACLE (test labels chose these configs)\n\n{ORACLE_NOTE}\n\n"
        markdown += _markdown_table(table[oracle])
    return markdown


def _method_cell(r: pd.Series) -> str:
    """The method, marked ``(ORACLE)`` and ``DEGENERATE k/n`` (k of n seeds collapsed into one
    cluster holding > 90% of the rows) where that applies."""
    cell = f"{r['method']} (ORACLE)" if r.get("oracle") else str(r["method"])
    if r.get("degenerate", 0):
        cell += f" DEGENERATE {int(r['degenerate'])}/{int(r['seeds'])}"
    return cell


def _k_cell(r: pd.Series) -> str:
    """The clusters found: ``10``, ``K̂=9 (10 classes)`` when estimated, ``12 (10 classes)``
    when asked for another count than the class count; ``-`` for runs older than the column."""
    k, classes = int(r.get("num_clusters", 0) or 0), int(r.get("num_classes", 0) or 0)
    if not k:
        return "-"
    cell = f"K̂={k}" if r.get("k_estimated") else str(k)
    return cell + (f" ({classes} classes)" if classes and classes != k else "")


def _markdown_table(table: pd.DataFrame) -> str:
    cols = [
        "setting",
        "benchmark",
        "backbone",
        "method",
        "seeds",
        "K",
        "ACC",
        "bal. ACC",
        "NMI",
        "ARI",
        "GCD Old / New",
        "kNN prec@20",
        "trials",
        "compute s",
        "selected by",
        "config",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():

        def fmt(m: str, r=r) -> str:
            if pd.isna(r.get(m, np.nan)):
                return "-"
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
            _method_cell(r),
            str(r["seeds"]),
            _k_cell(r),
            fmt("acc"),
            fmt("bacc"),
            fmt("nmi"),
            fmt("ari"),
            old_new,
            "-" if pd.isna(prec) else f"{100 * prec:.2f}",
            str(r["trials"]) if r["trials"] else "-",
            "-" if pd.isna(r["seconds"]) else f"{r['compute_s']:.0f}",
            r["selected_by"],
            r["config_hash"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(store: ArtifactStore) -> tuple[pd.DataFrame, str]:
    """Rebuild the leaderboard files and plots from all runs and searches under the store;
    return (table, markdown)."""
    from orchestrator.plots import write_plots

    runs = collect_runs(store)
    table = build_table(runs, collect_records(store))
    markdown = to_markdown(table)
    store.root.mkdir(parents=True, exist_ok=True)
    store.leaderboard_path("md").write_text(markdown)
    table.to_csv(store.leaderboard_path("csv"), index=False)
    store.leaderboard_path("json").write_text(
        json.dumps(table.to_dict(orient="records"), indent=2, default=str)
    )
    write_plots(store, table, runs)
    return table, markdown


def leaderboard_files(store: ArtifactStore) -> list[Path]:
    from orchestrator.plots import plot_paths

    return [store.leaderboard_path(s) for s in ("md", "csv", "json")] + [
        p for p in plot_paths(store) if p.is_file()
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m orchestrator.leaderboard",
        description="Rebuild the leaderboard (Markdown, CSV, JSON, PNG) from a sweep's runs.",
    )
    p.add_argument("dir", help="a sweep's --output folder (holds runs/ and tune/)")
    args = p.parse_args(argv)
    root = Path(args.dir)
    store = ArtifactStore(root.resolve())
    if not any(store.runs_root(oracle).is_dir() for oracle in (False, True)):
        print(f"error: {root} holds no runs/ folder; pass a sweep's --output", file=sys.stderr)
        return 2
    _, markdown = write_leaderboard(store)
    print(markdown)
    print(f"leaderboard: {', '.join(str(p) for p in leaderboard_files(store))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
