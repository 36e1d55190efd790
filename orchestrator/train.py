"""``python -m orchestrator.train``: one method, one benchmark, one seed, on Ray Train.

    python -m orchestrator.train --method unic --benchmark digits
    python -m orchestrator.train --method unic --benchmark parquet:../shared/data/cifar10/test.parquet \\
        --set pos_k=30 --set neg_rule=random
    python -m orchestrator.train --method unic --benchmark digits --finetune --workers 2 \\
        --subset 256 --epochs 2

Writes the same artifacts the sweep reads (embeddings, neighbours, ``runs/...``) and rebuilds
the leaderboard. Killed mid-run, the same command resumes from the last epoch's checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from deepclust.artifacts import ArtifactStore
from deepclust.config import from_dict, parse_override
from deepclust.errors import UserError
from orchestrator.cli import (
    add_common_arguments,
    ray_session_for,
    run_cli,
    select_benchmarks,
    settings_from_args,
)
from trainables.methods import METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.train",
        description="Train one method on one benchmark (Ray Train).",
    )
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS.names())}")
    p.add_argument(
        "--benchmark", required=True, help="a dataset name, parquet:<path> or folder:<path>"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method config override (repeatable; values parsed as JSON when they "
        "can be, e.g. --set pos_k=30 --set neg_rule=random); a staged method's parent "
        "stage takes PARENT.KEY=VALUE, e.g. --method scan_selflabel --set scan.min_steps=500",
    )
    p.add_argument(
        "--finetune",
        action="store_true",
        help="finetune the backbone's last blocks + head on augmented images (scan, "
        "scan_selflabel, iic, spice, unic)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray Train DDP workers (default 1); 0 trains a cached-embedding head in this "
        "process, without Ray Train",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (finetune epochs with --finetune)"
    )
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        help="use only the first N images of each split (smoke runs)",
    )
    add_common_arguments(p)
    return p


def _overrides(args: argparse.Namespace, parent: str | None) -> tuple[dict, dict]:
    """``--set`` items -> (method overrides, parent-stage overrides)."""
    out: dict = {}
    parent_out: dict = {}
    for item in args.set:
        key, value = parse_override(item)
        target = out
        stage, dot, rest = key.partition(".")
        if dot:
            if stage != parent:
                valid = f"'{parent}.KEY'" if parent else "plain KEY=VALUE (no parent stage)"
                raise UserError(
                    f"--set {key}: '{stage}' is not the parent stage of '{args.method}'; "
                    f"use {valid}"
                )
            target, key = parent_out, rest
        target[key] = value
    if args.finetune:
        out["finetune"] = True
    if args.epochs is not None:
        out["ft_epochs" if args.finetune else "epochs"] = args.epochs
    return out, parent_out


def _has_finetune(name: str) -> bool:
    return "finetune" in {f.name for f in dataclasses.fields(METHODS.get(name).Config)}


def run(args: argparse.Namespace, explicit_root: bool) -> int:
    from orchestrator.leaderboard import write_leaderboard
    from orchestrator.pipeline import BenchmarkSplits, MethodRun, run_benchmark, score_text

    args.methods, args.seeds = args.method, str(args.seed)
    settings = settings_from_args(args, explicit_root)
    method_cls = METHODS.get(args.method)
    if args.finetune and not _has_finetune(args.method):
        with_mode = [n for n in METHODS.names() if _has_finetune(n)]
        raise UserError(
            f"method '{args.method}' has no finetune mode (methods with one: "
            f"{', '.join(with_mode)}); drop --finetune"
        )
    overrides, parent_overrides = _overrides(args, method_cls.starts_from)
    from_dict(method_cls.Config, overrides)  # unknown/mistyped keys fail before any work
    if method_cls.starts_from:
        from_dict(METHODS.get(method_cls.starts_from).Config, parent_overrides)
    if args.workers < 0 or (args.workers == 0 and args.finetune):
        raise UserError(f"--workers must be >= 1 (>= 0 without --finetune), got {args.workers}")
    if args.workers > 1 and not method_cls.trainable:
        raise UserError(f"method '{args.method}' is not trained; drop --workers")
    ArtifactStore.check_writable(settings.output)
    (splits,), _ = select_benchmarks(args.benchmark, settings)
    if args.subset:
        fit = splits.fit.subset(args.subset)
        ev = fit if splits.eval is splits.fit else splits.eval.subset(args.subset)
        splits = BenchmarkSplits(splits.spec, fit, ev, splits.name)
    run_spec = MethodRun(
        args.method, args.seed, overrides, args.workers, args.subset, parent_overrides
    )
    store = ArtifactStore(settings.output)
    session = ray_session_for(args)
    t0 = time.perf_counter()
    try:
        (result,) = run_benchmark(splits, settings, store, session, [run_spec])
    finally:
        session.close()
    _, markdown = write_leaderboard(store)
    print("\n" + markdown)
    print(f"{args.method} on {splits.name}: {score_text(result)} ({time.perf_counter() - t0:.1f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
