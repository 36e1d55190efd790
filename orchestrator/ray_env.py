"""The only place that calls ``ray.init``, and where the sweep learns the cluster it will have.
(Ray is imported on first use: the CLI answers ``--help`` and one-line errors without it.)

Connects to ``address`` (or ``$RAY_ADDRESS``, e.g. a job submitted to a ``ray up`` cluster),
else starts a local Ray with the dashboard (``ray[default]`` is a dependency: Train V2's
placement-group cleanup needs the State API).

Every resource decision of a sweep (embedding actors, kNN shards, trials at once, the default
budget and fidelity) is made from :class:`ClusterResources`, the cluster the sweep *can grow
to*, not the nodes alive when it starts: on an autoscaling cluster the start is exactly when
no worker exists yet. The capacity comes from, in order:

1. ``--gpus N`` (a cluster without an autoscaler whose nodes join by hand);
2. the autoscaler's own configuration, read on the head node where the driver of a
   ``ray job submit`` runs: the monitor process named in the GCS autoscaling status was
   started with ``--autoscaling-config``; ``~/ray_bootstrap_config.yaml`` is the file
   ``ray up`` writes there;
3. the nodes alive now (a local Ray, a static cluster).

Where the capacity exceeds what is alive, the autoscaler is asked for it
(``ray.autoscaler.sdk.request_resources``) and the sweep waits, with a progress bar, until the
first node that can run its work has joined (``--cluster-timeout`` ends the wait with one
line). Later nodes join while the sweep runs: the embedding actor pool grows to one actor per
GPU, and pending kNN shards, trials and seed runs keep the autoscaler busy. The request is
withdrawn when the sweep closes its session, so idle nodes can go.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepclust.errors import UserError

log = logging.getLogger(__name__)

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # where `ray up` puts it on the head
DEFAULT_CLUSTER_TIMEOUT_S = 900  # a cloud GPU node with a large image takes minutes to join


@dataclass(frozen=True)
class ClusterResources:
    """The cluster a sweep plans for: what it can grow to (``cpus``, ``gpus``) and what is
    alive (``live_*``). CPUs are never invented: a cluster with none is an error."""

    cpus: int
    gpus: int
    # CPUs of the largest node: one task can never ask for more (cluster totals would leave it
    # unschedulable on a multi-node CPU cluster); 0 means "as many as the totals"
    node_cpus: int = 0
    # CPUs that come with each GPU on the GPU nodes (their CPUs / their GPUs): what a GPU Train
    # worker may ask for to decode and augment its images in parallel
    cpus_per_gpu: int = 0
    live_cpus: int = -1  # -1: the same as the capacity
    live_gpus: int = -1
    source: str = "live nodes"

    def task_cpus(self, tasks: int) -> int:
        """CPUs for each of ``tasks`` tasks that share the cluster's CPUs (>= 1, <= a node's)."""
        share = max(1, self.cpus // max(1, tasks))
        return min(share, self.node_cpus) if self.node_cpus else share

    def train_worker_cpus(self, use_gpu: bool) -> int:
        """CPUs one Ray Train worker reserves: on a GPU, its GPU's share of the node's CPUs
        less one left for trial drivers and decode tasks (the rest decode and augment its
        images in parallel); on CPUs one (its torch threads use the share it is given)."""
        return max(1, self.cpus_per_gpu - 1) if use_gpu else 1

    @property
    def alive(self) -> tuple[int, int]:
        """(CPUs, GPUs) alive now."""
        cpus = self.cpus if self.live_cpus < 0 else self.live_cpus
        return cpus, self.gpus if self.live_gpus < 0 else self.live_gpus

    def describe(self) -> str:
        cpus, gpus = self.alive
        text = f"{self.cpus} CPUs, {self.gpus} GPUs ({self.source})"
        if (cpus, gpus) != (self.cpus, self.gpus):
            text += f"; alive now: {cpus} CPUs, {gpus} GPUs"
        return text


# --- the autoscaler's configuration ------------------------------------------------------


def _node_types(config: dict[str, Any]) -> list[tuple[str, dict[str, float], int]]:
    """(name, resources, most nodes) of each node type; the head counts once."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    out = []
    for name, spec in types.items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        most = 1 if name == head else int(spec.get("max_workers", 0))
        out.append((name, resources, most))
    return out


def config_capacity(config: dict[str, Any]) -> tuple[ClusterResources | None, list[str]]:
    """What an autoscaler configuration lets the cluster grow to, and warnings.

    Each worker type counts ``max_workers`` nodes, GPU types first, until the cluster-wide
    ``max_workers`` is used up. A type that declares no CPU/GPU (``resources: {}``, filled in
    later from the cloud's instance catalogue) cannot be counted; it is named in a warning.
    """
    head = config.get("head_node_type")
    remaining = int(config.get("max_workers", 10**9))
    cpus = gpus = node_cpus = 0
    per_gpu: list[int] = []
    warnings = []
    ordered = sorted(_node_types(config), key=lambda t: (t[0] != head, -t[1].get("GPU", 0)))
    for name, resources, most in ordered:
        if name != head:
            most, remaining = min(most, remaining), remaining - min(most, remaining)
            if most and "CPU" not in resources and "GPU" not in resources:
                warnings.append(
                    f"node type '{name}' declares no CPU/GPU resources, so its nodes cannot be "
                    "counted; declare them in the cluster config or pass --gpus N"
                )
                continue
        if not most:
            continue
        node_cpu, node_gpu = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        cpus, gpus = cpus + most * node_cpu, gpus + most * node_gpu
        node_cpus = max(node_cpus, node_cpu)
        if node_gpu:
            per_gpu.append(node_cpu // node_gpu)
    if not cpus and not gpus:
        return None, warnings
    return ClusterResources(cpus, gpus, node_cpus, min(per_gpu, default=0)), warnings


def _monitor_config_path(status: dict[str, Any]) -> Path | None:
    """The ``--autoscaling-config`` of the autoscaler process, when it runs on this machine."""
    pid = status.get("monitor_pid")
    try:
        argv = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{int(pid)}/cwd"))
    except (TypeError, ValueError, OSError):
        return None
    for i, arg in enumerate(a.decode(errors="replace") for a in argv):
        if arg.startswith("--autoscaling-config"):
            value = arg.partition("=")[2] or (argv[i + 1].decode() if i + 1 < len(argv) else "")
            path = Path(value).expanduser()
            return path if path.is_absolute() else cwd / path
    return None


def autoscaler_config() -> tuple[dict[str, Any] | None, str]:
    """The running autoscaler's cluster configuration (None where there is none) and where it
    was read. Needs a connected Ray."""
    import yaml
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(b"__autoscaling_status", namespace=None)
    if not raw:
        return None, ""  # no autoscaler runs for this cluster
    try:
        status = json.loads(raw)
    except ValueError:
        status = {}
    for path in (_monitor_config_path(status), BOOTSTRAP_CONFIG.expanduser()):
        if path is not None and path.is_file():
            try:
                config = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                log.warning("cannot read the autoscaler config %s: %s", path, exc)
                continue
            if isinstance(config, dict):
                return config, str(path)
    log.warning(
        "an autoscaler runs, but its configuration is not readable from this machine; the "
        "sweep plans for the nodes alive now (pass --gpus N to plan for N GPUs)"
    )
    return None, ""


# --- what is alive ---------------------------------------------------------------------


def live_resources() -> ClusterResources:
    """The alive nodes' totals (no CPU is assumed where the cluster reports none)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = int(sum(n.get("CPU", 0) for n in nodes))
    gpus = int(sum(n.get("GPU", 0) for n in nodes))
    per_gpu = [int(n.get("CPU", 0) // n["GPU"]) for n in nodes if n.get("GPU")]
    return ClusterResources(
        cpus,
        gpus,
        node_cpus=int(max((n.get("CPU", 0) for n in nodes), default=0)),
        cpus_per_gpu=min(per_gpu, default=0),
    )


def plan_resources(
    live: ClusterResources,
    config: ClusterResources | None,
    gpus: int | None = None,
    source: str = "",
) -> ClusterResources:
    """The capacity to plan for: the larger of the alive nodes and the autoscaler's
    configuration, with ``gpus`` (``--gpus``) overriding the GPU count."""
    best = config or live
    if gpus is not None:
        origin = "--gpus"
    elif config is not None and (config.cpus > live.cpus or config.gpus > live.gpus):
        origin = f"autoscaler config {source}"
    else:
        origin = "live nodes"
    plan = ClusterResources(
        cpus=best.cpus,
        gpus=max(live.gpus, best.gpus) if gpus is None else gpus,
        node_cpus=best.node_cpus,
        cpus_per_gpu=best.cpus_per_gpu,
        source=origin,
    )
    return _with_live(plan, live)


def _usable(plan: ClusterResources, live: ClusterResources) -> bool:
    """Whether the alive nodes can run the sweep's work: a GPU where the plan has GPUs (every
    stage then asks for one), else a CPU."""
    return live.gpus > 0 if plan.gpus else live.cpus > 0


def wait_for_nodes(plan: ClusterResources, timeout_s: float) -> ClusterResources:
    """Ask the autoscaler for the planned capacity and wait until a node that can run the
    sweep's work is alive; return the plan with the alive counts updated."""
    from ray.autoscaler.sdk import request_resources

    if plan.gpus:
        request_resources(bundles=[{"GPU": 1}] * plan.gpus)
    else:
        request_resources(num_cpus=plan.cpus)
    from deepclust.progress import bar as progress

    unit = "GPU" if plan.gpus else "CPU"
    target = plan.gpus or plan.cpus
    deadline = time.monotonic() + timeout_s
    with progress(total=target, desc=f"waiting for cluster {unit}s", unit=unit) as bar:
        while True:
            live = live_resources()
            bar.n = min(target, live.gpus if plan.gpus else live.cpus)
            bar.refresh()
            if _usable(plan, live) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    if not _usable(plan, live):
        raise UserError(
            f"no node with a {unit} joined the cluster within {timeout_s:.0f} s (planned: "
            f"{plan.describe()}); check `ray status` and the autoscaler log "
            "(monitor.out), raise --cluster-timeout, or pass --gpus 0 to run on CPUs"
        )
    return _with_live(plan, live)


def _with_live(plan: ClusterResources, live: ClusterResources) -> ClusterResources:
    return replace(
        plan,
        cpus=max(plan.cpus, live.cpus),
        node_cpus=max(plan.node_cpus, live.node_cpus),
        cpus_per_gpu=max(plan.cpus_per_gpu, live.cpus_per_gpu),
        live_cpus=live.cpus,
        live_gpus=live.gpus,
    )


def clear_request() -> None:
    """Withdraw this driver's resource request so idle nodes can be scaled down."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception as exc:  # the cluster may already be gone; nothing to withdraw then
        log.debug("could not withdraw the resource request: %s", exc)


CONNECT_TIMEOUT_S = 15.0  # to open a TCP connection to a given cluster address


def check_reachable(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A one-line UserError unless a Ray cluster answers at ``address`` within ``timeout_s``
    (``ray.init`` itself waits for minutes on an address nobody answers). A ``host:port``
    (the head's GCS) gets one GCS call, which a Ray GCS answers even when it then asks for
    a token: a TCP or HTTP/2 handshake alone is also answered by proxies. A
    ``ray://host:port`` (Ray Client) gets a TCP connection. ``None``, ``local`` and ``auto``
    are Ray's own lookups and are not probed."""
    if not address or address in ("local", "auto"):
        return
    client = address.startswith("ray://")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address must be HOST:PORT or ray://HOST:PORT, got '{address}'")
    host = host or "127.0.0.1"
    fix = (
        "check the address, that the head node runs (`ray status` there) and that its port "
        "is open, or drop --ray-address / RAY_ADDRESS to start Ray on this machine"
    )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({reason} within {timeout_s:g} s); {fix}"
        ) from None
    if client:
        return
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:  # a GCS that wants the token: fine
            raise UserError(
                f"no Ray cluster answers at {address} ({exc.code().name.lower()}: "
                f"{(exc.details() or '').splitlines()[0][:80]}); {fix}"
            ) from None
    finally:
        channel.close()


_started_here = False  # this process started the Ray it uses (init_ray without an address)


def route_ray_logging() -> None:
    """After ``import ray``: Ray's loggers (``ray``, ``ray.tune``, ``ray.train``, ...) drop the
    console handler Ray gives them and pass their records to this process's handlers (the log
    file; the console with -v, see ``cli._ConsoleFilter``)."""
    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        ray_logger.removeHandler(handler)
    ray_logger.propagate = True


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    gpus: int | None = None,
    timeout_s: float = DEFAULT_CLUSTER_TIMEOUT_S,
) -> ClusterResources:
    """Start or join Ray once per process and return the cluster the sweep plans for."""
    import ray

    global _started_here
    route_ray_logging()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here, no prompt
    # Train V2 runs appear in the dashboard's Train view only with state tracking, read where
    # `TorchTrainer.fit()` is called: this process (final runs) and Tune trials (runtime env)
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        check_reachable(address)
        kwargs: dict[str, Any] = {}
        _started_here = address in (None, "local")
        if _started_here:  # a cluster this process starts
            cpus = num_cpus or os.cpu_count() or 1
            kwargs = {"num_cpus": num_cpus} if num_cpus else {}
            # Ray keeps about one idle worker per CPU and ends the rest; each search's trial
            # actors are new processes, so by default they end the seed tasks' idle workers and
            # every seed stage starts and imports torch afresh. Twice the CPUs keeps them warm.
            kwargs["_system_config"] = {"num_workers_soft_limit": 2 * cpus}
        # Ray's core worker takes over SIGTERM (it dumps a C++ stack and aborts); a handler
        # the command line installed (cli.Interrupts: a one-line stop) is put back
        sigterm = signal.getsignal(signal.SIGTERM)
        context = ray.init(
            address=address,
            logging_level=logging.INFO,  # into the log file (the console with -v)
            runtime_env={
                "env_vars": {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"},
                "worker_process_setup_hook": "orchestrator.ray_env.setup_worker",
            },
            **kwargs,
        )
        if callable(sigterm) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)  # (only the main thread may set one)
        url = getattr(context, "dashboard_url", None)
        if url:  # on a cluster: `ray dashboard cluster.yaml` forwards it to this machine
            log.info("ray dashboard: http://%s%s", url.removeprefix("http://"), _token_hint())
    live = live_resources()
    # a Ray this process started is one machine, never autoscaled (its monitor still posts a
    # status, with no configuration behind it)
    config, where = (None, "") if _started_here else autoscaler_config()
    capacity = None
    if config is not None:
        capacity, warnings = config_capacity(config)
        for line in warnings:
            log.warning("%s (%s)", line, where)
    plan = plan_resources(live, capacity, gpus, where)
    if plan.live_cpus < plan.cpus or plan.live_gpus < plan.gpus:
        log.info("cluster: up to %s; asking the autoscaler for it", plan.describe())
        plan = wait_for_nodes(plan, timeout_s)
    if plan.cpus < 1:
        raise UserError(
            f"the cluster has no CPUs ({plan.describe()}); add a node with CPUs, or declare "
            "the worker types' resources in the autoscaler config"
        )
    log.info("cluster: %s", plan.describe())
    return plan


def setup_worker() -> None:
    """Runs in every worker process of the sweep's job (``worker_process_setup_hook``)."""
    pin_cluster_address()
    sys.unraisablehook = quiet_exit_unraisable


def quiet_exit_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook`` of the sweep's workers: a ``SystemExit`` is not reported.

    Ray ends its workers with SIGTERM when the sweep stops (Ctrl-C included), and a worker's
    SIGTERM handler raises ``SystemExit``. When the signal lands inside a weakref callback or a
    ``__del__``, Python cannot raise it and prints "Exception ignored in ..." with a traceback,
    which Ray forwards to the sweep's console. The worker exits either way; every other
    unraisable exception is still reported.
    """
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def pin_cluster_address() -> None:
    """Points the state API inside Ray's own actors at the cluster the worker belongs to.

    Ray Train's placement-group cleaner (the actor that frees a run's placement group when its
    controller dies, e.g. when ASHA stops a Ray-Train-in-Tune trial) asks the state API for the
    controller with no address. With two Ray instances on one host that lookup raises "Found
    multiple active Ray instances", the cleaner's thread dies, the placement group stays
    reserved and later work that needs the whole cluster waits for it forever.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _token_hint() -> str:
    """Where the dashboard's token comes from, when the cluster asks for one (a local Ray
    2.60 turns token authentication on by default)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        enabled = is_token_auth_enabled()
    except ImportError:  # a Ray without token authentication
        return ""
    if not enabled:
        return ""
    where = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
    return f" (it asks for the cluster's token: `ray get-auth-token` prints it, from {where})"


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class RaySession:
    """Ray started on first need: a fully cached sweep never pays for ``ray.init``."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        gpus: int | None = None,
        timeout_s: float = DEFAULT_CLUSTER_TIMEOUT_S,
    ) -> None:
        self._address, self._num_cpus = address, num_cpus
        self._gpus, self._timeout_s = gpus, timeout_s
        self._resources: ClusterResources | None = None

    def resources(self) -> ClusterResources:
        import ray

        if self._resources is None or not ray.is_initialized():  # (re)joins after a shutdown
            self._resources = init_ray(self._address, self._num_cpus, self._gpus, self._timeout_s)
        return self._resources

    def close(self) -> None:
        if self._resources is not None:
            if self._resources.source != "live nodes":  # only a planned cluster asked for nodes
                clear_request()
            shutdown_ray()
            self._resources = None
