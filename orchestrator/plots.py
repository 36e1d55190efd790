"""Leaderboard plots (PNG, matplotlib's Agg backend: no display needed).

* ``leaderboard_acc.png``: ACC (mean ± std over seeds), one group of bars per (setting,
  benchmark, backbone). Which rows get a bar (``bar_rows``) never depends on test labels:

  - oracle rows (``--oracle``: test labels ranked the search's trials) are left out; they are
    upper bounds, not results (the leaderboard lists them in their own section);
  - of a method's honest rows, the one the most recent honest search chose (the latest
    ``search.json`` naming a row of that method: the row its label-free objective picked);
  - a method no search chose a row of (``--budget 0``, ``orchestrator.train``): every row,
    each bar labelled with its config hash when there are several.

  Accuracy is only ever the bar's height, never what picks the bar.
* ``unic_k.png``: UNIC against its positive-neighbour count: ACC of every honest UNIC run in
  the store, and the search objective of every honest UNIC trial (what the search saw); each
  panel only where its points span two or more counts. Oracle runs and trials are left out.

Legends sit to the right of the axes, never over the data.
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
ORACLE_METRIC = "oracle_acc"  # trainables.objective.ORACLE: only an --oracle trial reports it
ROW = ["setting", "benchmark", "backbone", "method"]

log = logging.getLogger(__name__)


def plot_paths(store: ArtifactStore) -> list[Path]:
    return [store.root / "leaderboard_acc.png", store.root / "unic_k.png"]


def _unic_trials(store: ArtifactStore) -> list[tuple[int, float, str]]:
    """(pos_k, objective, metric) of every finished honest UNIC trial under tune/ (a trial
    of an --oracle search, which reports ``oracle_acc``, is left out)."""
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
        if ORACLE_METRIC in last:
            continue
        metric = next((m for m in ("selection_score", "val_acc") if m in last), None)
        # degenerate trials carry the worst finite value (trainables.objective.WORST): omitted
        if metric and "pos_k" in config and abs(float(last[metric])) < WORST:
            out.append((int(config["pos_k"]), float(last[metric]), metric))
    return out


def bar_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard rows the ACC plot draws, one bar each, with a ``label`` column (see the
    module docstring): never oracle rows; per (setting, benchmark, backbone, method) the row
    of the latest honest search (``selected_at``), else every row. Test accuracy plays no
    part in the choice."""
    columns = [*table.columns, "label"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    oracle = table["oracle"].fillna(False).astype(bool) if "oracle" in table else False
    honest = table[~oracle & table["acc"].notna()]  # unlabelled collections have no ACC
    picked = []
    for _, group in honest.groupby(ROW, sort=True):
        at = pd.to_numeric(
            group["selected_at"] if "selected_at" in group else pd.Series(np.nan, group.index),
            errors="coerce",
        )
        rows = group.loc[[at.idxmax()]] if at.notna().any() else group
        rows = rows.assign(
            label=[
                f"{r.method} {r.config_hash}" if len(rows) > 1 else r.method
                for r in rows.itertuples()
            ]
        )
        picked.append(rows)
    if not picked:
        return pd.DataFrame(columns=columns)
    return pd.concat(picked).sort_values([*ROW, "label"]).reset_index(drop=True)


def write_plots(store: ArtifactStore, table: pd.DataFrame, runs: list[dict[str, Any]]) -> None:
    """Write the PNGs for ``table`` (rows as build_table makes them); no rows, no plots."""
    if table.empty:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = bar_rows(table)
    if bars.empty:  # only oracle rows: no ACC plot (and none left from an earlier build)
        plot_paths(store)[0].unlink(missing_ok=True)
    else:
        _acc_plot(plt, bars, plot_paths(store)[0])

    unic_runs = [
        (r["diagnostics"].get("pos_k") or r["config"].get("pos_k"), r["acc"], r["benchmark"])
        for r in runs
        if r.get("method") == "unic"
        and not r.get("oracle")
        and "acc" in r  # an unlabelled collection's runs are not scored
        and isinstance(r.get("diagnostics"), dict)
    ]
    unic_runs = [u for u in unic_runs if u[0] is not None]
    trials = _unic_trials(store)
    # a panel against pos_k says something only where pos_k varies: a default run (one pos_k)
    # draws none, and with no panel left there is no plot (nor one left from an earlier build)
    panels = [kind for kind, pts in (("runs", unic_runs), ("trials", trials)) if _spread(pts)]
    if not panels:
        plot_paths(store)[1].unlink(missing_ok=True)
        return
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, kind in zip(axes[0], panels, strict=True):
        if kind == "runs":
            for bench in sorted({b for _, _, b in unic_runs}):
                pts = sorted((k, a) for k, a, b in unic_runs if b == bench)
                ax.plot([k for k, _ in pts], [100 * a for _, a in pts], "o", label=bench)
            ax.set_ylabel("ACC (%)")
            ax.set_title("UNIC runs")
        else:
            for metric in sorted({m for _, _, m in trials}):
                pts = [(k, v) for k, v, m in trials if m == metric]
                ax.plot([k for k, _ in pts], [v for _, v in pts], "x", label=metric)
            ax.set_ylabel("search objective")
            ax.set_title("UNIC trials (degenerate ones omitted)")
        ax.set_xlabel("positive neighbours (pos_k)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend_outside(ax)
    fig.tight_layout()
    fig.savefig(plot_paths(store)[1], dpi=120, bbox_inches="tight")
    plt.close(fig)


def _spread(points: list[tuple]) -> bool:
    """At least two distinct pos_k values among ``points`` (pos_k first in each)."""
    return len({p[0] for p in points}) >= 2


def _legend_outside(ax) -> None:
    """The legend to the right of the axes, never over the data."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _acc_plot(plt, bars: pd.DataFrame, path: Path) -> None:
    """One bar per row of ``bars`` (``bar_rows``), grouped by (setting, benchmark, backbone)."""
    groups = sorted({(r.setting, r.benchmark, r.backbone) for r in bars.itertuples()})
    labels = sorted(bars["label"].unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(labels) / 2), 4))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        rows = [
            bars[
                (bars.label == label)
                & (bars.setting == s)
                & (bars.benchmark == b)
                & (bars.backbone == k)
            ]
            for s, b, k in groups
        ]
        acc = [100 * r["acc"].iloc[0] if len(r) else np.nan for r in rows]
        std = [100 * r["acc_std"].iloc[0] if len(r) else 0.0 for r in rows]
        ax.bar(np.arange(len(groups)) + i * width, acc, width, yerr=std, label=label, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{b}\n{s}" for s, b, _ in groups], fontsize=8)
    ax.set_ylabel("ACC (%)")
    ax.set_title("Clustering accuracy (mean ± std over seeds; oracle rows left out)")
    ax.set_ylim(0, 100)
    _legend_outside(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
