"""The only place that calls ``ray.init``.

Connects to ``address`` (or ``$RAY_ADDRESS``, e.g. on a cluster started with ``ray up``), else
starts a local Ray with the dashboard (``ray[default]`` is a dependency: Train V2's
placement-group cleanup needs the State API, see shared/spec/ray-notes.md section 8.1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterResources:
    cpus: int
    gpus: int
    # CPUs of the largest node: one task can never ask for more (cluster totals would leave it
    # unschedulable on a multi-node CPU cluster); 0 means "as many as the totals"
    node_cpus: int = 0

    def task_cpus(self, tasks: int) -> int:
        """CPUs for each of ``tasks`` tasks that share the cluster's CPUs (>= 1, <= a node's)."""
        share = max(1, self.cpus // max(1, tasks))
        return min(share, self.node_cpus) if self.node_cpus else share


def init_ray(address: str | None = None, num_cpus: int | None = None) -> ClusterResources:
    """Start or join Ray once per process and return the cluster's CPU/GPU totals."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here, no prompt
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = {"num_cpus": num_cpus} if address is None and num_cpus else {}
        context = ray.init(address=address, logging_level=logging.WARNING, **kwargs)
        url = getattr(context, "dashboard_url", None)
        if url:  # on a cluster: `ray dashboard cluster.yaml` forwards it to this machine
            log.info("ray dashboard: http://%s", url.removeprefix("http://"))
    res = ray.cluster_resources()
    per_node = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    out = ClusterResources(
        cpus=int(res.get("CPU", 1)),
        gpus=int(res.get("GPU", 0)),
        node_cpus=max(1, int(max(per_node, default=res.get("CPU", 1)))),
    )
    log.info("ray: %d CPUs, %d GPUs", out.cpus, out.gpus)
    return out


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


class RaySession:
    """Ray started on first need: a fully cached sweep never pays for ``ray.init``."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self._address, self._num_cpus = address, num_cpus
        self._resources: ClusterResources | None = None

    def resources(self) -> ClusterResources:
        if self._resources is None or not ray.is_initialized():  # (re)joins after a shutdown
            self._resources = init_ray(self._address, self._num_cpus)
        return self._resources

    def close(self) -> None:
        if self._resources is not None:
            shutdown_ray()
            self._resources = None
