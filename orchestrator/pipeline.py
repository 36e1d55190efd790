"""One benchmark end to end: load splits -> embed -> mine -> each method x seed -> metrics.

Every stage is cached by its inputs' key (see deepclust/artifacts.py), so an interrupted
sweep resumes where it stopped and a finished one re-runs in seconds.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.artifacts import ArtifactStore, Embeddings, stable_key
from deepclust.config import from_dict, to_dict
from deepclust.datasets import DatasetSpec, ImageSet, aligned_eval
from deepclust.errors import UserError
from deepclust.gcd import GcdSplit, default_old_classes, gcd_scores, make_split
from deepclust.knn import check_k
from deepclust.metrics import clustering_metrics, is_degenerate
from deepclust.num_clusters import k_range
from deepclust.progress import bar as progress
from deepclust.views import BenchmarkView, apply_view
from orchestrator.mine import ensure_neighbors
from orchestrator.outputs import write_outputs
from orchestrator.ray_env import RaySession
from trainables import inputs, state_io
from trainables.job import TrainJob
from trainables.methods import METHODS, ClusteringMethod, FitInputs
from trainables.methods.base import DEFAULT_KMAX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSettings:
    """Everything the CLI decides for a sweep (validated before any work starts)."""

    data_root: Path
    download: bool
    output: Path
    backbone: str
    weights_file: str | None
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    kmax: int | None  # None: min(50, N - 1); an explicit k >= N is an error
    knn_backend: str
    knn_shards: int
    batch_size: int
    setting: str = "clustering"  # clustering | gcd
    gcd_labelled_frac: float = 0.5  # of the Old-class images (docs/gcd.md, GCD: the labelled draw)
    gcd_val_frac: float = 0.0  # of each Old class's labelled images, held out for selection
    # Ray Train workers ask for a GPU each when the cluster has GPUs; False keeps them on CPU
    # (gloo), e.g. while the GPUs are busy, or on a cluster that advertises GPUs it has not got
    # (the simulated multi-node cluster of tests/orchestrator/test_multinode.py)
    train_on_gpu: bool = True
    view: BenchmarkView = BenchmarkView()  # --classes / --imbalance / --ignore-labels
    num_clusters: int | str | None = None  # None: the class count; "auto": estimated
    galleries: bool = True  # each method's assignments, gallery and map (orchestrator/outputs.py)


@dataclass(frozen=True)
class BenchmarkSplits:
    spec: DatasetSpec
    fit: ImageSet
    eval: ImageSet
    # the benchmark as runs, searches and the leaderboard name it: the spec's name, plus the
    # view and the asked-for cluster count when given (``cifar10[classes=0,1,2][K=auto]``)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.spec.name)


def load_splits(spec: DatasetSpec, settings: SweepSettings) -> BenchmarkSplits:
    """Load the fit and eval splits (raises DatasetUnavailable when the data is missing)."""
    fit = spec.load(spec.fit_split, settings.data_root, settings.download)
    ev = (
        fit
        if spec.eval_split == spec.fit_split
        else spec.load(spec.eval_split, settings.data_root, settings.download)
    )
    ev = aligned_eval(fit, ev)
    # a view (deepclust/views.py): the long-tailed draw is the fit split's; a separate eval
    # split keeps its class balance
    viewed = apply_view(fit, settings.view)
    ev = viewed if ev is fit else apply_view(ev, settings.view, long_tail=False)
    if not viewed.labelled and settings.num_clusters is None:
        raise UserError(
            f"{spec.name} has no labels, so no class count: give --num-clusters N or "
            "--num-clusters auto"
        )
    if settings.num_clusters == "auto":
        k_range(len(viewed))  # too few images to choose K from: one line before Ray starts
    elif settings.num_clusters is not None and settings.num_clusters > len(viewed):
        raise UserError(
            f"--num-clusters {settings.num_clusters} is more than the {len(viewed)} images of "
            f"{spec.name}; give at most {len(viewed)}"
        )
    name = spec.name
    if not settings.view.is_identity:
        name += f"[{settings.view.tag()}]"
    if settings.num_clusters is not None:
        name += f"[K={settings.num_clusters}]"
    return BenchmarkSplits(spec, viewed, ev, name)


@dataclass(frozen=True)
class MethodRun:
    """One method x seed on one benchmark, plus how to train it."""

    method: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)  # overrides, validated strictly
    # Ray Train workers (DDP) for trainable methods; 0: train in this process (heads on
    # cached embeddings on a machine without GPUs, where Train's per-run start-up would
    # dominate; a finetune run always goes through Ray Train)
    workers: int = 1
    subset: int | None = None  # first n images (finetune smoke runs)
    # a staged method's parent-stage overrides (default: the parent's default config)
    parent_config: dict[str, Any] = field(default_factory=dict)
    # the config (or its parent stage's) was chosen by test labels (an --oracle search): the
    # run lives apart, under runs-oracle/ (ArtifactStore.run_dir), and its metrics.json says
    # ``"oracle": true``; a staged run's parent stage lives in the same tree
    oracle: bool = False


@dataclass(frozen=True)
class GcdContext:
    """A benchmark's GCD split as every stage sees it: the split, the file it is stored in
    (what Ray tasks and trials read) and its cache key."""

    split: GcdSplit
    path: Path
    key: str


# keys of the runs this process wrote (itself or through its seed tasks)
_written_here: set[str] = set()


@dataclass(frozen=True)
class BenchmarkContext:
    """What a benchmark's stages produced, and where its runs go: every run on the benchmark
    reads it (the embeddings of both splits, the fit split's kNN table, the GCD split)."""

    splits: BenchmarkSplits
    fit_emb: Embeddings
    eval_emb: Embeddings
    neighbors: np.ndarray  # (N, kmax) mined neighbour ids of the fit split
    neighbors_meta: dict[str, Any]  # the table's cache meta: key, path, nbr_precision@k
    settings: SweepSettings
    store: ArtifactStore
    ray_session: RaySession | None = None  # None inside a seed task (it starts nothing)
    gcd: GcdContext | None = None  # the GCD setting; None: clustering
    num_clusters: int = 0  # clusters every method finds (--num-clusters); 0: the class count
    # --num-clusters auto: the estimate's record (orchestrator/num_clusters.py), else None
    k_estimate: dict[str, Any] | None = None

    @property
    def k(self) -> int:
        """The number of clusters to find."""
        return self.num_clusters or self.splits.fit.num_classes


def _absolute(name: str) -> str:
    """``parquet:``/``folder:`` names with an absolute path (Ray workers have another cwd)."""
    prefix, sep, path = name.partition(":")
    return f"{prefix}:{Path(path).resolve()}" if sep and prefix in ("parquet", "folder") else name


def _job(
    run: MethodRun,
    init_state: Path | None,
    ctx: BenchmarkContext,
    work_dir: Path,
    keep_fits: bool = False,
) -> TrainJob:
    """The job a Ray worker rebuilds the method and its inputs from (trainables/job.py): the
    paths of ``ctx``'s artifacts, never its arrays."""
    splits, settings, gcd = ctx.splits, ctx.settings, ctx.gcd
    return TrainJob(
        method=run.method,
        method_config=run.config,
        seed=run.seed,
        num_clusters=ctx.k,
        fit_embeddings=ctx.fit_emb.meta["path"],
        eval_embeddings=ctx.eval_emb.meta["path"],
        neighbors=ctx.neighbors_meta.get("path"),
        dataset=_absolute(splits.spec.name),
        data_root=str(settings.data_root.resolve()),
        # loader split names; workers re-apply the subset (an ImageSet.subset split is "all[:16]")
        fit_split=splits.fit.loaded_split,
        eval_split=splits.eval.loaded_split,
        subset=run.subset,
        view_classes=settings.view.classes,
        view_imbalance=settings.view.imbalance,
        view_ignore_labels=settings.view.ignore_labels,
        backbone=settings.backbone,
        backbone_weights=settings.weights_file,
        work_dir=str(work_dir),
        init_state=str(init_state) if init_state else None,
        gcd_split=str(gcd.path) if gcd else None,
        keep_fits=keep_fits,
    )


def run_method(
    run: MethodRun,
    ctx: BenchmarkContext,
    require_state: bool = False,
    cached_only: bool = False,
    fitted: inputs.KeptFit | None = None,
) -> dict[str, Any] | None:
    """Fit, predict the eval split, score, and write the run's artifacts (cached by key).

    ``cached_only``: return the cached result, or None where the run (or its parent) would
    have to train.

    ``fitted``: a search trial's fit of exactly this run (same config, seed and inputs), used
    instead of training it again.

    ``ctx.gcd`` (the split, its file and key): the GCD setting. Methods with ``gcd_labels`` get the
    labelled rows and their labels, nothing else; every run is scored on the unlabelled rows.

    ``require_state``: a cached run without its exported state (a later stage needs it) is
    trained again.

    A staged method (``starts_from``) first gets its parent run (same seed, the parent's
    default config updated with ``run.parent_config``; cached like any run) and starts from
    the parent's saved state.
    """
    method_cls = _check_run(run, ctx)
    parent = None
    if method_cls.starts_from:
        parent = _parent_result(run, method_cls.starts_from, ctx, cached_only)
        if parent is None:
            return None
    plan = _plan(run, ctx, parent)
    previous = _cached(run, ctx, plan, require_state)
    if previous is not None or cached_only:
        return previous
    t0 = time.perf_counter()
    if fitted is not None:
        fit = _Fit(fitted.predictions, fitted.diagnostics, fitted.state_file)
        t0 -= fitted.seconds
    elif _trains_with_ray_train(run):
        fit = _fit_with_ray_train(run, ctx, plan)
    else:
        fit = _fit_in_process(run, ctx, plan)
    result = _result(run, ctx, plan, fit, parent, time.perf_counter() - t0)
    extra = {inputs.STATE_FILE: fit.state_file} if fit.exports_state else None
    ctx.store.write_run(plan.run_dir, fit.predictions, result, extra)
    _written_here.add(plan.key)
    if fit.state_file is not None and fit.state_file.name.endswith(".state.pt") and fitted is None:
        fit.state_file.unlink(missing_ok=True)  # a temporary copy beside the run folder
    log.info(
        "%s/%s seed %d: %s (%s)",
        ctx.splits.name,
        run.method,
        run.seed,
        score_text(result),
        ", ".join(f"{k}={v:.3g}" for k, v in fit.diagnostics.items() if isinstance(v, int | float)),
    )
    return result


def score_text(result: dict[str, Any]) -> str:
    """``acc=... nmi=... ari=...``, or the cluster count of an unlabelled collection's run."""
    if "acc" not in result:
        return f"{result['num_clusters']} clusters (unlabelled: not scored)"
    return " ".join(f"{m}={result[m]:.4f}" for m in ("acc", "nmi", "ari"))


@dataclass(frozen=True)
class _RunPlan:
    """Where a run lives and what identifies it (its cache key and config hash)."""

    key: str
    config: dict[str, Any]  # the full, validated config
    config_hash: str
    run_dir: Path
    init_state: Path | None  # a staged method's parent state file


@dataclass(frozen=True)
class _Fit:
    predictions: np.ndarray  # (M,) cluster ids of the eval split
    diagnostics: dict[str, Any]
    state_file: Path | None  # the method's export_state(), for the stages that start from it

    @property
    def exports_state(self) -> bool:
        return self.state_file is not None and self.state_file.exists()


def _check_run(run: MethodRun, ctx: BenchmarkContext) -> type[ClusteringMethod]:
    """The run's method class, once the run is one it can do (setting, parent overrides)."""
    method_cls = METHODS.get(run.method)
    setting = "gcd" if ctx.gcd else "clustering"
    if setting not in method_cls.settings:
        raise UserError(
            f"method '{run.method}' does not run in the {setting} setting; "
            f"use --setting {sorted(method_cls.settings)[0]}"
        )
    if run.parent_config and not method_cls.starts_from:
        raise UserError(f"method '{run.method}' has no parent stage; drop the parent overrides")
    return method_cls


def _parent_result(
    run: MethodRun, parent_method: str, ctx: BenchmarkContext, cached_only: bool
) -> dict[str, Any] | None:
    """A staged method's parent run (same seed, ``run.parent_config``), with its state."""
    parent_run = MethodRun(
        parent_method,
        run.seed,
        config=run.parent_config,
        workers=run.workers,
        subset=run.subset,
        oracle=run.oracle,
    )
    return run_method(parent_run, ctx, require_state=True, cached_only=cached_only)


def _plan(run: MethodRun, ctx: BenchmarkContext, parent: dict[str, Any] | None) -> _RunPlan:
    method_cls = METHODS.get(run.method)
    splits, settings, store, gcd = ctx.splits, ctx.settings, ctx.store, ctx.gcd
    config = to_dict(from_dict(method_cls.Config, run.config))
    key = stable_key(
        {
            **({"parent": parent["key"]} if parent else {}),
            **({"gcd_split": gcd.key} if gcd else {}),
            # an asked-for or estimated K (the class count is the embeddings' own)
            **({"num_clusters": ctx.k} if ctx.num_clusters else {}),
            "fit": ctx.fit_emb.meta["key"],
            "eval": ctx.eval_emb.meta["key"],
            "method": run.method,
            "config": config,
            "seed": run.seed,
            "neighbors": ctx.neighbors_meta["key"],
            "workers": run.workers,
        }
    )
    # a staged method's parent overrides are part of its identity (run dir, leaderboard row)
    identity = {"config": config, "parent_config": run.parent_config}
    config_hash = stable_key(identity if run.parent_config else config)[:8]

    def run_dir(method: str, config_hash: str) -> Path:
        variant = run_variant(method, config_hash, gcd)
        return store.run_dir(splits.name, settings.backbone, variant, run.seed, run.oracle)

    init_state = None
    if parent is not None:
        init_state = run_dir(parent["method"], parent["config_hash"]) / inputs.STATE_FILE
    return _RunPlan(key, config, config_hash, run_dir(run.method, config_hash), init_state)


def _cached(
    run: MethodRun, ctx: BenchmarkContext, plan: _RunPlan, require_state: bool
) -> dict[str, Any] | None:
    """The run's earlier result when it is complete, current (same key) and, where a later
    stage needs it, has its state file."""
    expected_rows = None if run.subset else len(ctx.eval_emb.labels)
    previous = ctx.store.read_run(plan.run_dir, expected_rows)
    if (
        previous is None
        or previous.get("key") != plan.key
        or (require_state and not (plan.run_dir / inputs.STATE_FILE).exists())
    ):
        return None
    # news only when an earlier sweep wrote it (this one looks its own runs up again)
    level = logging.DEBUG if plan.key in _written_here else logging.INFO
    log.log(level, "%s/%s seed %d: cached", ctx.splits.name, run.method, run.seed)
    return previous


def _fit_with_ray_train(run: MethodRun, ctx: BenchmarkContext, plan: _RunPlan) -> _Fit:
    """A DDP run (workers asked for, or a backbone finetune) through Ray Train."""
    from trainables import ray_train

    if plan.init_state is not None:  # a planted or damaged file: one line here, not per worker
        inputs.load_state(str(plan.init_state))
    resources = ctx.ray_session.resources()
    job = _job(run, plan.init_state, ctx, plan.run_dir.with_name(plan.run_dir.name + ".work"))
    # Ray caps a 1-CPU worker at one thread; trials run one at a time here, so on CPU each
    # worker may use its share of the node (as the embedding actors do)
    workers = max(1, run.workers)
    use_gpu = resources.gpus > 0 and ctx.settings.train_on_gpu
    job = job.replace(
        cpu_threads=0 if use_gpu else resources.task_cpus(workers),
        train_cpus=resources.train_worker_cpus(use_gpu),
    )
    predictions, diagnostics = ray_train.train(
        job,
        workers,
        use_gpu,
        ctx.store.root / "ray",
        name=f"{run.method}-{ctx.splits.fit.split}-seed{run.seed}-{plan.key[:10]}",
    )
    return _Fit(predictions, diagnostics, Path(job.work_dir) / inputs.STATE_FILE)


def _fit_in_process(run: MethodRun, ctx: BenchmarkContext, plan: _RunPlan) -> _Fit:
    """Heads on cached embeddings and k-means, in this process (a Ray task per seed)."""
    method_cls = METHODS.get(run.method)
    method = method_cls(from_dict(method_cls.Config, run.config))
    init_state = str(plan.init_state) if plan.init_state else None
    diagnostics = method.fit(
        FitInputs(
            embeddings=ctx.fit_emb.features,
            num_clusters=ctx.k,
            seed=run.seed,
            neighbors=ctx.neighbors if "neighbors" in method_cls.needs else None,
            labels=ctx.fit_emb.labels if method_cls.uses_labels else None,  # leak guard
            init_state=inputs.load_state(init_state),
            **(_gcd_inputs(ctx.gcd.split, method_cls.gcd_labels) if ctx.gcd else {}),
        )
    )
    predictions = method.predict(ctx.eval_emb.features)
    state = method.export_state()
    state_file = None
    if state is not None:  # data only (trainables/state_io.py): shared storage
        state_file = plan.run_dir.with_name(plan.run_dir.name + ".state.pt")
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_io.save_state(state, state_file)
    return _Fit(predictions, diagnostics, state_file)


def _result(
    run: MethodRun,
    ctx: BenchmarkContext,
    plan: _RunPlan,
    fit: _Fit,
    parent: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """The run's metrics.json: scores on the eval split (GCD: its unlabelled rows), identity,
    diagnostics and timing."""
    method_cls = METHODS.get(run.method)
    splits, gcd, eval_labels = ctx.splits, ctx.gcd, ctx.eval_emb.labels
    predictions, diagnostics = fit.predictions, fit.diagnostics
    if gcd:
        metrics = gcd_scores(predictions, eval_labels, gcd.split)
    elif splits.eval.labelled:
        metrics = clustering_metrics(eval_labels[: len(predictions)], predictions)
    else:  # an unlabelled collection: nothing to score against
        metrics = {}
    return {
        "key": plan.key,
        "setting": "gcd" if gcd else "clustering",
        **({"old_classes": list(gcd.split.old_classes)} if gcd else {}),
        "benchmark": splits.name,
        "fit_split": splits.fit.split,
        "eval_split": splits.eval.split,
        "backbone": ctx.settings.backbone,
        "method": run.method,
        "seed": run.seed,
        "config": plan.config,
        **({"parent_config": run.parent_config} if run.parent_config else {}),
        "config_hash": plan.config_hash,
        "oracle": run.oracle,  # test labels chose this config: an upper bound, kept apart
        "objective": method_cls.objective,
        "objective_value": diagnostics.get(method_cls.objective),
        "diagnostics": diagnostics,
        "num_clusters": ctx.k,
        "num_classes": splits.fit.num_classes,  # 0: an unlabelled collection
        **({"k_estimate": ctx.k_estimate} if ctx.k_estimate else {}),
        "n_fit": len(ctx.fit_emb.labels),
        "n_eval": len(gcd.split.unlabelled_idx) if gcd else len(predictions),
        **metrics,
        # label-free: one cluster holds > 90% of the rows (marked, and the sweep exits 1)
        "degenerate": is_degenerate(predictions),
        **{k: v for k, v in ctx.neighbors_meta.items() if k.startswith("nbr_precision@")},
        "seconds": round(seconds, 2),
        "seconds_total": round(seconds + (parent or {}).get("seconds", 0), 2),
        "run_dir": str(plan.run_dir),
    }


def _trains_with_ray_train(run: MethodRun) -> bool:
    """DDP workers asked for, or a backbone finetune: the run goes through Ray Train (its
    workers read the artifacts); every other run trains in one process."""
    method_cls = METHODS.get(run.method)
    finetune = bool(to_dict(from_dict(method_cls.Config, run.config)).get("finetune"))
    return method_cls.trainable and (run.workers > 0 or finetune)


def _run_all(
    runs: list[MethodRun],
    ctx: BenchmarkContext,
    require_state: bool = False,
    background: bool = False,
    hold: list[Callable[[], None]] | None = None,
):
    """Every run, in order: cached ones answered here (a cached sweep starts no Ray), Ray
    Train runs started from here, and the rest as Ray tasks side by side that read the
    artifacts themselves (``_submit_in_parallel``), staged methods after their parents' methods
    so a child finds its parent's run instead of training it again beside it.

    ``background``: return at once a function that waits for the runs and returns their
    results, so the caller can go on (a sweep searches its next method meanwhile). Runs that
    must wait for other runs of this call (a staged wave) still run before it returns.
    ``hold`` (with ``background``): the Ray tasks are not submitted yet; a function that
    submits them is appended to ``hold`` for the caller to call (waiting submits them too).
    """
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for i, run in enumerate(runs):
        cached = run_method(run, ctx, require_state, cached_only=True)
        if cached is not None:
            results[i] = cached
        elif _trains_with_ray_train(run):
            results[i] = run_method(run, ctx, require_state)
        else:
            pending.append(i)
    waves = [
        wave
        for staged in (False, True)
        if (wave := [i for i in pending if bool(METHODS.get(runs[i].method).starts_from) == staged])
    ]
    on_gpu = ctx.settings.train_on_gpu and waves
    gpus = ctx.ray_session.resources().gpus if on_gpu else 0
    last = None
    for n, wave in enumerate(waves):
        submit = _Submission([runs[i] for i in wave], ctx, gpus, require_state)
        if background and n == len(waves) - 1:
            last = (wave, submit)
            if hold is None:
                submit.start()
            else:
                hold.append(submit.start)
        else:
            results.update(zip(wave, submit.wait(), strict=True))

    def finish() -> list[dict[str, Any]]:
        if last is not None:
            results.update(zip(last[0], last[1].wait(), strict=True))
        return [results[i] for i in range(len(runs))]

    return finish if background else finish()


def run_variant(method: str, config_hash: str, gcd) -> str:
    """A run folder's name: the method (``-gcd`` in the GCD setting) and its config hash."""
    return f"{method}-gcd-{config_hash}" if gcd else f"{method}-{config_hash}"


def _gcd_inputs(split: GcdSplit, gcd_labels: bool) -> dict[str, np.ndarray]:
    """What a GCD method may see (docs/gcd.md, GCD: what methods receive): the unlabelled row
    ids, and for ``gcd_labels`` methods the labelled rows and their labels; never another
    label."""
    out = {"unlabelled_idx": split.unlabelled_idx}
    if gcd_labels:
        out.update(labelled_idx=split.labelled_idx, labelled_y=split.labelled_y)
    return out


def ensure_gcd_split(
    splits: BenchmarkSplits, fit_emb: Embeddings, settings: SweepSettings, store: ArtifactStore
) -> GcdContext:
    """The benchmark's GCD split (docs/gcd.md, GCD: the labelled draw: Old classes, 50% of
    their images labelled, seed 0), computed once per embedded train pool and stored beside the
    embeddings."""
    old = default_old_classes(
        splits.spec.name, splits.fit.num_classes, tuple(splits.fit.class_names)
    )
    key = stable_key(
        {
            "labels": fit_emb.meta["key"],
            "old": list(old),
            "labelled_frac": settings.gcd_labelled_frac,
            "val_frac": settings.gcd_val_frac,
        }
    )
    directory = store.gcd_split_dir(fit_emb.meta["key"], key)
    path = directory / "split.npz"
    if ArtifactStore.check(directory, key) is None and path.is_file():
        with np.load(path) as f:
            return GcdContext(GcdSplit.from_arrays(dict(f)), path, key)
    split = make_split(fit_emb.labels, old, settings.gcd_labelled_frac, settings.gcd_val_frac)
    tmp = ArtifactStore.begin(directory)
    try:
        np.savez(tmp / "split.npz", **split.arrays())
        ArtifactStore.commit(
            tmp,
            directory,
            key,
            len(fit_emb.labels),
            old_classes=list(old),
            labelled=len(split.labelled_idx),
            unlabelled=len(split.unlabelled_idx),
            val=len(split.val_idx),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "GCD split of %s: Old classes %s, %d labelled, %d held out, %d unlabelled",
        splits.spec.name,
        list(old),
        len(split.labelled_idx),
        len(split.val_idx),
        len(split.unlabelled_idx),
    )
    return GcdContext(split, path, key)


def prepare_artifacts(
    splits: BenchmarkSplits, settings: SweepSettings, store: ArtifactStore, ray_session: RaySession
) -> tuple[Embeddings, Embeddings, tuple]:
    """Embeddings of both splits and the fit split's kNN table (each cached by its key)."""
    # imported here: Ray Data is the driver's alone; the seed tasks that import this module
    # start faster without it
    from orchestrator.embed import EmbedOptions, ensure_embeddings

    if settings.kmax:  # a --kmax the fit split cannot have fails before any image is embedded
        check_k(len(splits.fit), settings.kmax)
    opts = EmbedOptions(settings.backbone, settings.weights_file, settings.batch_size)
    fit_emb = ensure_embeddings(splits.fit, opts, store, ray_session)
    eval_emb = (
        fit_emb
        if splits.eval is splits.fit
        else ensure_embeddings(splits.eval, opts, store, ray_session)
    )
    kmax = settings.kmax or min(DEFAULT_KMAX, len(fit_emb.labels) - 1)
    neighbors = ensure_neighbors(
        fit_emb, kmax, store, ray_session, settings.knn_backend, settings.knn_shards
    )
    return fit_emb, eval_emb, neighbors


def run_benchmark(
    splits: BenchmarkSplits,
    settings: SweepSettings,
    store: ArtifactStore,
    ray_session: RaySession,
    runs: list[MethodRun] | None = None,
    search=None,
    failures: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Embed, mine and run every requested method x seed (or ``runs``) on one benchmark.

    ``search`` (orchestrator.search.SearchOptions): first search each method's
    hyperparameters with Ray Tune, then run the best configuration with every seed. A method
    whose trials all fail is logged with its reason (and appended to ``failures``); the sweep
    goes on with the next method.

    GCD: the fit split is the whole pool (the protocol is transductive; the eval split is
    not used) and every run is scored on its unlabelled rows.
    """
    gcd = None
    if settings.setting == "gcd":
        if not splits.fit.labelled:
            raise UserError(
                f"{splits.spec.name} has no labels: GCD needs labelled images; use --setting "
                "clustering"
            )
        splits = BenchmarkSplits(splits.spec, splits.fit, splits.fit, splits.name)
    fit_emb, eval_emb, (neighbors, nbr_meta) = prepare_artifacts(
        splits, settings, store, ray_session
    )
    if settings.setting == "gcd":
        gcd = ensure_gcd_split(splits, fit_emb, settings, store)
    ctx = BenchmarkContext(
        splits, fit_emb, eval_emb, neighbors, nbr_meta, settings, store, ray_session, gcd
    )
    if settings.num_clusters is not None:
        from orchestrator.num_clusters import resolve_num_clusters

        ctx = replace(ctx, **resolve_num_clusters(ctx))
    if search is not None and search.oracle and not splits.eval.labelled:
        raise UserError(f"{splits.spec.name} has no labels: --oracle needs a labelled benchmark")
    if search is not None and runs is None:
        results = _search_all(ctx, search, failures)
    else:
        # as a search's final runs: heads on cached embeddings train in one process each, as
        # Ray tasks side by side (a 1-worker Ray Train run per seed would add its start-up and
        # run the seeds one after another); a finetune config still goes through Ray Train
        runs = runs or [
            MethodRun(m, seed, workers=0) for m in settings.methods for seed in settings.seeds
        ]
        results = _run_all(runs, ctx)
    if settings.galleries:
        write_outputs(ctx, results)
    return results


def _search_all(
    ctx: BenchmarkContext, search, failures: list[str] | None = None
) -> list[dict[str, Any]]:
    """Search every method of ``ctx.settings`` in turn, then run each one's best config with
    every seed (``_search_and_run``); the results of all, method by method.

    A method's seed runs go on while the next method searches, queued in Ray behind that
    search's first trials: submitted once those trials run (or once that search ends), they
    take a core when a trial ends early (a short trial, an ASHA stop) instead of making the
    trials wait for them. A staged method's seed runs start from its parent's, so they wait
    for those.
    """
    from orchestrator.search import SearchFailed

    chosen: dict[str, tuple[dict[str, Any], bool]] = {}
    running: dict[str, Callable[[], list[dict[str, Any]]]] = {}
    done: dict[str, list[dict[str, Any]]] = {}
    held: list[Callable[[], None]] = []  # submit the last method's seed runs

    def settle(method: str | None) -> None:
        if method in running:
            done[method] = running.pop(method)()

    for method in ctx.settings.methods:
        parent = METHODS.get(method).starts_from
        try:
            running[method] = _search_and_run(
                method,
                ctx,
                search,
                chosen,
                background=True,
                before_runs=lambda parent=parent: settle(parent),
                hold=held,
            )
        except SearchFailed as exc:
            log.error("%s on %s: %s", method, ctx.splits.name, exc)
            if failures is not None:
                failures.append(f"{method} on {ctx.splits.name}: {exc}")
    _release(held)
    for method in list(running):
        settle(method)
    return [r for method in ctx.settings.methods for r in done.get(method, [])]


def _without_images(imageset: ImageSet) -> ImageSet:
    """The split's identity (name, split, classes, fingerprint) without its labels or image
    source: what a seed task needs of it (labels come from the embeddings artifact)."""
    return replace(
        imageset,
        labels=np.zeros(0, np.int64),
        pixels=None,
        encoded=None,
        paths=(),
        parquet=None,
    )


def _task_inputs(ctx: BenchmarkContext) -> dict[str, Any]:
    """What a seed task is sent: artifact paths and small metadata, no per-image array."""
    splits, gcd = ctx.splits, ctx.gcd
    return {
        "splits": BenchmarkSplits(
            splits.spec, _without_images(splits.fit), _without_images(splits.eval), splits.name
        ),
        "fit": ctx.fit_emb.meta["path"],
        "eval": ctx.eval_emb.meta["path"],
        "neighbors": ctx.neighbors_meta,
        "settings": ctx.settings,
        "store": ctx.store,
        "gcd": (str(gcd.path), gcd.key) if gcd else None,
        "num_clusters": ctx.num_clusters,
        "k_estimate": ctx.k_estimate,
    }


def _read_task_inputs(shared: dict[str, Any]) -> BenchmarkContext:
    """The seed task's own reads of the artifacts the driver named (shared storage on a
    cluster, like every artifact)."""
    store: ArtifactStore = shared["store"]
    fit_emb = store.read_embeddings(Path(shared["fit"]), features=False)  # read on first use
    eval_emb = (
        fit_emb
        if shared["eval"] == shared["fit"]
        else store.read_embeddings(Path(shared["eval"]), features=False)
    )
    nbr_meta = shared["neighbors"]
    gcd = None
    if shared["gcd"]:
        path, key = shared["gcd"]
        with np.load(path) as f:
            gcd = GcdContext(GcdSplit.from_arrays(dict(f)), Path(path), key)
    return BenchmarkContext(
        shared["splits"],
        fit_emb,
        eval_emb,
        store.read_neighbors(Path(nbr_meta["path"]))[0],
        nbr_meta,
        shared["settings"],
        store,
        gcd=gcd,
        num_clusters=shared["num_clusters"],
        k_estimate=shared["k_estimate"],
    )


def _run_task(run: MethodRun, shared: dict[str, Any], require_state: bool) -> dict[str, Any]:
    """One seed's in-process run inside a 1-CPU Ray task (see ``_submit_in_parallel``)."""
    import torch

    torch.set_num_threads(1)
    return run_method(run, _read_task_inputs(shared), require_state)


def seed_lines(benchmark: str, results: list[dict[str, Any]]) -> list[str]:
    """One line per method for runs that finished side by side: its seeds and their scores."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    lines = []
    for method, rows in by_method.items():
        seeds = ", ".join(str(r["seed"]) for r in rows)
        scores = " ".join(
            f"{m}={'/'.join(f'{r[m]:.4f}' for r in rows)}"
            for m in ("acc", "nmi", "ari")
            if m in rows[0]
        ) or score_text(rows[0])
        lines.append(f"{benchmark}/{method} seed{'s' if len(rows) > 1 else ''} {seeds}: {scores}")
    return lines


def _release(held: list[Callable[[], None]]) -> None:
    """Submit the held runs (``_run_all(hold=...)``), in the order they were held."""
    while held:
        held.pop(0)()


class _Submission:
    """``_submit_in_parallel`` of some runs, submitted on ``start()`` (once) or on ``wait()``."""

    def __init__(self, runs: list[MethodRun], ctx: BenchmarkContext, gpus: int, state: bool):
        self._args = (runs, ctx, gpus, state)
        self._wait: Callable[[], list[dict[str, Any]]] | None = None

    def start(self) -> None:
        if self._wait is None:
            self._wait = _submit_in_parallel(*self._args)

    def wait(self) -> list[dict[str, Any]]:
        self.start()
        return self._wait()


def _submit_in_parallel(
    runs: list[MethodRun], ctx: BenchmarkContext, gpus: int = 0, require_state: bool = False
) -> Callable[[], list[dict[str, Any]]]:
    """Runs that train in one process (heads on cached embeddings, k-means), as Ray tasks side
    by side: one GPU each when the cluster has GPUs, else one CPU each (one torch thread per
    run beats one run on every core for heads this small). Each task gets the artifacts'
    paths and reads the embeddings, neighbours and GCD split itself, so no per-image array
    passes through the driver; it writes its run folder as the driver would (cached runs
    return at once). Returns at once; the function it returns waits for the runs."""
    import ray

    splits = ctx.splits
    shared = ray.put(_task_inputs(ctx))
    task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(_run_task)
    refs = [task.remote(r, shared, require_state) for r in runs]

    def wait() -> list[dict[str, Any]]:
        left = list(refs)
        methods = ", ".join(dict.fromkeys(r.method for r in runs))
        with progress(total=len(refs), desc=f"{splits.name}/{methods} runs", unit="run") as b:
            while left:
                done, left = ray.wait(left, num_returns=1)
                b.update(len(done))
        results = ray.get(refs)
        _written_here.update(r["key"] for r in results)
        for line in seed_lines(splits.name, results):
            log.info("%s", line)
        return results

    return wait


SEARCH_VAL_FRAC = 0.2  # GCD search: held-out share of each Old class's labelled images


def _search_and_run(
    method: str,
    ctx: BenchmarkContext,
    search,
    chosen: dict[str, tuple[dict[str, Any], bool]],
    background: bool = False,
    before_runs: Callable[[], None] | None = None,
    hold: list[Callable[[], None]] | None = None,
):
    """Search ``method`` (orchestrator/search.py), then run its best config with every seed.

    ``background``: return, once the seed runs are started, a function that waits for them
    and returns their results (``_run_all``). ``before_runs`` is called before they start.
    ``hold``: what it holds is submitted (``_release``) once this search's first trials run
    (and when the search ends), and this method's seed runs are appended to it instead of
    being submitted.

    A staged method starts from its parent's configuration chosen earlier in this sweep (or
    the parent's config at the search fidelity). GCD trials are ranked on held-out labelled
    images: when the headline split holds none out, the search uses a split that does.

    ``--oracle`` (``search.oracle``): a config that test labels chose (this method's search,
    or its parent stage's) runs as ``MethodRun(oracle=True)``: its run folders live apart
    from the honest ones (``runs-oracle/``), even when the honest search chose the same
    config, and its search record joins only those rows. ``chosen`` maps a method to the
    config its search chose and whether test labels chose it.
    """
    from orchestrator.search import search_method, write_record
    from search_spaces import fidelity_overrides, is_empty

    method_cls = METHODS.get(method)
    # Heads on cached embeddings train in a Ray task per seed (on a GPU when there is one);
    # Ray Train is for finetuning, where DDP pays (a 1-worker TorchTrainer per seed would add
    # a controller and a placement group for no parallelism). A finetune config still goes
    # through Ray Train in run_method.
    workers = 0
    splits, fit_emb, eval_emb, gcd = ctx.splits, ctx.fit_emb, ctx.eval_emb, ctx.gcd
    settings, store = ctx.settings, ctx.store
    parent_cfg: dict[str, Any] = {}
    parent_oracle = False
    if method_cls.starts_from:
        parent_cfg, parent_oracle = chosen.get(method_cls.starts_from) or ({}, False)
        parent_cfg = parent_cfg or fidelity_overrides(method_cls.starts_from, search.fidelity)
    searching = search.budget > 0 and not is_empty(method)
    # test labels chose this config (its search ranked by them) or the parent stage's
    oracle = bool(search.oracle and (searching or parent_oracle))
    search_gcd = gcd
    if searching and gcd and not search.oracle and not len(gcd.split.val_idx):
        search_gcd = ensure_gcd_split(
            splits, fit_emb, replace(settings, gcd_val_frac=SEARCH_VAL_FRAC), store
        )
    search_ctx = replace(ctx, gcd=search_gcd)
    parent, init_state = None, None
    if searching and method_cls.starts_from:  # the trials start from the parent's state
        parent_run = MethodRun(
            method_cls.starts_from, search.seed, parent_cfg, workers, oracle=oracle
        )
        (parent,) = _run_all([parent_run], search_ctx, require_state=True)
        init_state = Path(parent["run_dir"]) / inputs.STATE_FILE
        inputs.load_state(str(init_state))  # a planted or damaged file: one line, not per trial
    exp_root = store.root / "tune"
    job = _job(
        MethodRun(method, search.seed, {}, 1),
        init_state,
        search_ctx,
        exp_root / "work",
        # a trial fitted on the headline inputs (not on a GCD selection split) keeps its fit:
        # the search seed's final run of the selected config is that fit
        keep_fits=search_gcd is gcd,
    )
    identity = {
        "benchmark": splits.name,
        "backbone": settings.backbone,
        "fit": fit_emb.meta["key"],
        "eval": eval_emb.meta["key"],
        "neighbors": ctx.neighbors_meta["key"],
        "gcd": search_gcd.key if search_gcd else None,
        "parent": parent["key"] if parent else None,
    }
    kmax = int(ctx.neighbors.shape[1])
    release = None if hold is None else functools.partial(_release, hold)
    try:
        outcome, key = search_method(
            method,
            job,
            identity,
            store,
            ctx.ray_session,
            settings.setting,
            search,
            kmax,
            on_running=release,
        )
    finally:
        if release is not None:
            release()
    chosen[method] = (outcome.config, oracle)
    runs = [
        MethodRun(method, seed, outcome.config, workers, None, parent_cfg, oracle)
        for seed in settings.seeds
    ]
    if outcome.path and job.keep_fits and search.seed in settings.seeds:
        run = runs[settings.seeds.index(search.seed)]
        kept = inputs.kept_fit(Path(outcome.path) / "fits", outcome.config, search.seed)
        if kept is not None and not _trains_with_ray_train(run):
            run_method(run, ctx, fitted=kept)
    if before_runs is not None:
        before_runs()
    pending = _run_all(runs, ctx, background=True, hold=hold)

    def finish() -> list[dict[str, Any]]:
        results = pending()
        if key is not None:
            write_record(outcome, key, results[0])
        return results

    return finish if background else finish()
