"""Where a sweep's work ran on a Ray cluster, read back through the Ray state API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ray.util import state


@contextmanager
def state_api_at(address: str) -> Iterator[None]:
    """Point the state API at ``address`` for the block. Its ``address=`` argument loses to
    ``$RAY_ADDRESS`` (which tests/conftest.py sets to "local" for the suite's isolation);
    ``$RAY_API_SERVER_ADDRESS`` wins over both."""
    before = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = before


def placements(address: str) -> tuple[dict[str, set[str]], set[str]]:
    """Node ids of every embedding actor, Tune trial, finished kNN shard and finished seed run
    of the cluster at ``address``; and the class names of its actors."""
    with state_api_at(address):
        actors = state.list_actors(address=address, limit=10_000, detail=True)
        tasks = state.list_tasks(address=address, limit=10_000, detail=True)
    out: dict[str, set[str]] = {"embed": set(), "trial": set(), "shard": set(), "seed": set()}
    for a in actors:
        if "Embedder" in a.class_name:
            out["embed"].add(a.node_id)
        elif "run_trial" in a.class_name or "ImplicitFunc" in a.class_name:
            out["trial"].add(a.node_id)
    for t in tasks:
        if t.state != "FINISHED":
            continue
        if t.name.endswith(("_search_shard", "_stream_shard")):
            out["shard"].add(t.node_id)
        elif t.name.endswith("_run_task"):
            out["seed"].add(t.node_id)
    return out, {a.class_name for a in actors}
