"""What the command lines (``orchestrator.sweep``, ``orchestrator.train``) share: the common
flags, turning them into the pipeline's settings, picking benchmarks, the Ray session, and
``run_cli`` (logging, one-line errors with exit 2, Ctrl-C with exit 130, SIGTERM with 143)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from deepclust.backbones import DEFAULT_BACKBONE, resolve_backbone
from deepclust.datasets import DATASETS, DatasetUnavailable, resolve_dataset
from deepclust.errors import UserError
from deepclust.knn import BACKENDS
from deepclust.views import BenchmarkView
from orchestrator.ray_env import DEFAULT_CLUSTER_TIMEOUT_S
from trainables.methods import METHODS

log = logging.getLogger("orchestrator.cli")


# --methods without a search (--budget 0) keeps the short default: the baseline every method
# must beat and the product's method (GCD: plus semi-supervised k-means, the GCD baseline).
DEFAULT_METHODS = ("kmeans", "unic")


DEFAULT_GCD_METHODS = ("kmeans", "sskmeans", "unic")


def split_csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_common_arguments(p: argparse.ArgumentParser, seeds: str = "0") -> None:
    """Flags shared by the sweep and the single-run entry point."""
    p.add_argument(
        "--data-root",
        default=os.environ.get("UNIC_DATA_ROOT", "data"),
        help="folder holding the standard datasets (default: $UNIC_DATA_ROOT or ./data)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download missing standard datasets (needs internet)",
    )
    p.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"registered backbone or any timm name with tag (default: {DEFAULT_BACKBONE}, "
        "offline)",
    )
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="local weights file for a timm backbone (air-gapped machines)",
    )
    p.add_argument(
        "--output", default="results", help="artifacts, runs and leaderboard (default: ./results)"
    )
    p.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default: {seeds})")
    p.add_argument(
        "--setting",
        default="clustering",
        choices=("clustering", "gcd"),
        help="clustering (no labels) or gcd: generalized category discovery on the train pool, "
        "50%% of the Old-class images labelled (docs/gcd.md)",
    )
    p.add_argument(
        "--gcd-val-frac",
        type=float,
        default=0.0,
        help="GCD: hold out this fraction of each Old class's labelled images for model "
        "selection (scored as val_acc, never trained on; default 0: headline runs)",
    )
    p.add_argument(
        "--num-clusters",
        default=None,
        help="clusters to find: N, or 'auto' (estimated without labels; GCD: from the labelled "
        "images). Default: the benchmark's class count; an unlabelled collection needs it",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="keep only these classes of a labelled benchmark (names or ids, comma-separated)",
    )
    p.add_argument(
        "--imbalance",
        type=float,
        default=None,
        help="long-tailed draw of a labelled benchmark: class i keeps n_max * R^(-i/(C-1)) "
        "images (R = largest / smallest class, the CIFAR-10-LT profile; fixed seed)",
    )
    p.add_argument(
        "--ignore-labels",
        action="store_true",
        help="run a labelled benchmark as an unlabelled collection (no accuracy columns)",
    )
    p.add_argument(
        "--no-gallery",
        action="store_true",
        help="skip each method's assignments.csv, gallery.html and map.png",
    )
    p.add_argument(
        "--kmax", type=int, default=None, help="neighbours mined per image (default: min(50, N-1))"
    )
    p.add_argument("--knn-backend", default="auto", choices=BACKENDS)
    p.add_argument(
        "--knn-shards",
        type=int,
        default=0,
        help="Ray tasks the kNN queries are split over (default: one per GPU, else 1)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS, else start a local one)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="plan for N GPUs (embedding actors, kNN shards, trials at once) on a cluster "
        "without an autoscaler config; 0 runs everything on CPUs (default: what the "
        "autoscaler can grow the cluster to, else the GPUs alive)",
    )
    p.add_argument(
        "--cluster-timeout",
        type=float,
        default=DEFAULT_CLUSTER_TIMEOUT_S,
        help="seconds to wait for the first node that can run the work to join "
        f"(default: {DEFAULT_CLUSTER_TIMEOUT_S})",
    )
    p.add_argument(
        "--cpu-workers",
        action="store_true",
        help="train on CPUs (Ray Train workers with gloo, trials and seed runs without a GPU) "
        "even where the cluster has GPUs",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug lines, and Ray's, Tune's and Ray Data's own output, on the console (they "
        "always go to the log file under OUTPUT/logs/)",
    )


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in split_csv(text))
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise UserError("--seeds is empty; give at least one integer seed")
    return seeds


def settings_from_args(args: argparse.Namespace, explicit_root: bool):
    from orchestrator.pipeline import SweepSettings

    setting = getattr(args, "setting", "clustering")
    in_setting = [n for n in METHODS.names() if setting in METHODS.get(n).settings]
    searching = getattr(args, "budget", 0) != 0 or getattr(args, "smoke_test", False)
    requested = args.methods or (
        "all"
        if searching
        else ",".join(DEFAULT_GCD_METHODS if setting == "gcd" else DEFAULT_METHODS)
    )
    methods = tuple(in_setting) if requested == "all" else tuple(split_csv(requested))
    for m in methods:
        if setting not in METHODS.get(m).settings:
            raise UserError(
                f"method '{m}' does not run in the {setting} setting "
                f"(it runs in: {', '.join(sorted(METHODS.get(m).settings))}); add --setting "
                f"{sorted(METHODS.get(m).settings)[0]} or drop it"
            )
    if not methods:
        raise UserError("--methods is empty; valid: " + ", ".join(in_setting))
    if not 0.0 <= args.gcd_val_frac < 1.0:
        raise UserError(f"--gcd-val-frac must be in [0, 1), got {args.gcd_val_frac}")
    resolve_backbone(args.backbone)
    data_root = Path(args.data_root).expanduser()
    if explicit_root and not data_root.is_dir() and not args.download:
        raise UserError(f"data root {data_root} does not exist; fix --data-root or add --download")
    if args.kmax is not None and args.kmax < 1:
        raise UserError(f"--kmax must be >= 1, got {args.kmax}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    view = BenchmarkView(
        tuple(split_csv(args.classes or "")), args.imbalance, bool(args.ignore_labels)
    )
    if view.ignore_labels and setting == "gcd":
        raise UserError(
            "--ignore-labels leaves GCD no labelled images; drop it or use --setting clustering"
        )
    return SweepSettings(
        data_root=data_root,
        download=args.download,
        output=Path(args.output).resolve(),  # Ray workers run elsewhere
        backbone=args.backbone,
        weights_file=args.backbone_weights,
        methods=methods,
        seeds=parse_seeds(args.seeds),
        kmax=args.kmax,
        knn_backend=args.knn_backend,
        knn_shards=args.knn_shards,
        batch_size=args.batch_size,
        setting=setting,
        gcd_val_frac=args.gcd_val_frac,
        train_on_gpu=not args.cpu_workers,
        view=view,
        num_clusters=parse_num_clusters(args.num_clusters),
        galleries=not args.no_gallery,
    )


def parse_num_clusters(text: str | None) -> int | str | None:
    """``--num-clusters``: None (the class count), an integer >= 2, or ``"auto"``."""
    if text is None or text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        raise UserError(f"--num-clusters must be an integer >= 2 or 'auto', got '{text}'") from None
    if k < 2:
        raise UserError(f"--num-clusters must be >= 2 (or 'auto'), got {k}")
    return k


def select_benchmarks(benchmark: str, settings) -> tuple[list, list[tuple[str, str]]]:
    """(loaded benchmark splits, skipped [(name, reason)]). 'all' skips missing data;
    an explicitly named benchmark with missing data is an error."""
    from orchestrator.pipeline import load_splits

    names = DATASETS.names() if benchmark == "all" else split_csv(benchmark)
    if not names:
        raise UserError("--benchmark is empty; use 'all' or NAME[,NAME]")
    specs = [resolve_dataset(n) for n in names]  # unknown names fail before any loading
    chosen, skipped = [], []
    for spec in specs:
        try:
            chosen.append(load_splits(spec, settings))
        except DatasetUnavailable as exc:
            if benchmark != "all":
                raise
            skipped.append((spec.name, str(exc)))
    return chosen, skipped


def ray_session_for(args: argparse.Namespace):
    """The RaySession the CLI flags describe (Ray itself starts on first need)."""
    from orchestrator.ray_env import RaySession

    if args.gpus is not None and args.gpus < 0:
        raise UserError(f"--gpus must be >= 0, got {args.gpus}")
    if args.cluster_timeout <= 0:
        raise UserError(f"--cluster-timeout must be > 0 seconds, got {args.cluster_timeout}")
    return RaySession(args.ray_address, args.num_cpus, args.gpus, args.cluster_timeout)


# a full disk, a quota, a read-only filesystem, permissions: the environment, not a bug
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


_REMOTE_USER_ERROR = re.compile(r"deepclust\.errors\.\w+: (.+)")


def user_error_in(exc: BaseException) -> str | None:
    """The message of the UserError behind ``exc``, also when Ray wrapped it (a task error
    keeps the cause object; a dead actor keeps only its text)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError) and type(exc).__module__.startswith("deepclust"):
            return str(exc)
        match = _REMOTE_USER_ERROR.search(str(exc))
        if match:
            return match.group(1).strip()
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


class Interrupts:
    """Which stop signal arrived: Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``, a job
    scheduler's preemption). Each still raises KeyboardInterrupt where the sweep runs. Ctrl-C
    in a terminal reaches the Ray processes this one started too, so a task or actor may fail
    with it before the KeyboardInterrupt surfaces: that error is then the interrupt."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def is_set(self) -> bool:
        return self.signum is not None

    def install(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):  # ray_env.init_ray keeps SIGTERM's
                signal.signal(signum, self._handler)
        return self

    def _handler(self, signum, frame):
        self.signum = signum
        raise KeyboardInterrupt

    def stopped(self, args) -> int:
        """The one line a stop prints, and its exit code (128 + the signal, as a shell's)."""
        signum = self.signum or signal.SIGINT
        name = signal.Signals(signum).name
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {name}"
        again = "with --resume " if hasattr(args, "resume") else ""  # a sweep's searches
        print(
            f"{what}: finished stages and trials are kept under {args.output}; rerun the same "
            f"command {again}to continue",
            file=sys.stderr,
        )
        return 128 + signum


LOG_DIR = "logs"  # under --output: one file per command run, everything at INFO (-v: DEBUG)


class _ConsoleFilter(logging.Filter):
    """What reaches the console without -v: the project's lines and warnings a user can act
    on. Ray's, Tune's and Ray Data's own loggers and the Python warnings raised inside Ray go
    to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "ray" or record.name.startswith("ray."):
            return False
        return not (record.name == "py.warnings" and "/ray/" in record.getMessage())


class _Console(logging.StreamHandler):
    """stderr, through ``tqdm.write``: a line logged while a progress bar is up prints above
    it instead of splitting it (deepclust/progress.py)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool, output: str | None, prog: str) -> list[logging.Handler]:
    """Console lines (``HH:MM:SS logger: message``) and, where ``output`` is given, a log file
    ``<output>/logs/<prog>-<time>.log`` with every line, Ray's and Tune's included. Ray's own
    loggers reach the console only with ``verbose`` (``ray_env.route_ray_logging`` points them
    here once Ray is imported). Returns the handlers added (``run_cli`` removes them at the end)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader narrates AVX probing
    logging.captureWarnings(True)  # warnings as log records: Ray's go to the file only
    added: list[logging.Handler] = []
    if not [h for h in root.handlers if not isinstance(h, logging.FileHandler)]:
        console = _Console()
        console.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        if not verbose:
            console.addFilter(_ConsoleFilter())
        added.append(console)
    if output:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        command = prog.split()[-1].rsplit(".", 1)[-1]  # "python -m orchestrator.sweep": sweep
        path = Path(output) / LOG_DIR / f"{command}-{stamp}.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = logging.FileHandler(path, encoding="utf-8", delay=True)
        except OSError:  # an unwritable --output fails later with its own one-line error
            file = None
        if file is not None:
            file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            added.append(file)
    for handler in added:
        root.addHandler(handler)
    return added


def run_cli(parser: argparse.ArgumentParser, run_fn, argv: list[str] | None) -> int:
    """Parse, set up logging, run; user errors become one line + exit 2, Ctrl-C exit 130."""
    args = parser.parse_args(argv)
    handlers = setup_logging(args.verbose, getattr(args, "output", None), parser.prog)
    argv_list = sys.argv[1:] if argv is None else argv
    explicit_root = any(a == "--data-root" or a.startswith("--data-root=") for a in argv_list)
    interrupted = Interrupts().install()
    try:
        return _run(args, run_fn, explicit_root, interrupted)
    finally:
        root = logging.getLogger()
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def _run(args, run_fn, explicit_root: bool, interrupted: Interrupts) -> int:
    try:
        return run_fn(args, explicit_root)
    except KeyboardInterrupt:
        return interrupted.stopped(args)
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: {exc.strerror}{where}; free space or fix the folder's permissions, then "
            f"rerun the same command (finished stages under {args.output} are kept)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        if interrupted.is_set():  # Ctrl-C reached a Ray worker first: its task failed with it
            return interrupted.stopped(args)
        message = user_error_in(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
