"""``python -m orchestrator.sweep``: search every method's hyperparameters on every benchmark
(Ray Tune + Optuna, label-free objectives), re-run each best configuration with 3 seeds, and
print the leaderboard.

Examples::

    python -m orchestrator.sweep --benchmark all          # every benchmark whose data exists
    python -m orchestrator.sweep --benchmark cifar10 --data-root ../shared/data
    python -m orchestrator.sweep --benchmark parquet:../shared/data/cifar10/test.parquet
    python -m orchestrator.sweep --smoke-test             # 2 tiny trials per method, 1 seed
    python -m orchestrator.sweep --resume                 # continue a killed sweep

Exit status: 0 when every method ran; 1 when a method's search failed or a run came out
degenerate (the other methods still run; the leaderboard marks the rows and one ``error:``
line sums up); 2 for a user's mistake (unknown names, missing data, bad k, unreadable images:
one ``error:`` line); 130 on Ctrl-C, 143 on SIGTERM (``kill``, a scheduler's preemption), each
with one line. Everything already computed stays cached under ``--output``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time

from deepclust.artifacts import ArtifactStore
from deepclust.datasets import DATASETS
from deepclust.errors import UserError
from orchestrator.cli import (
    DEFAULT_GCD_METHODS,
    DEFAULT_METHODS,
    add_common_arguments,
    ray_session_for,
    run_cli,
    select_benchmarks,
    settings_from_args,
    split_csv,
)
from search_spaces import FIDELITIES
from trainables.methods import METHODS

log = logging.getLogger("orchestrator.sweep")


# A search's default budget: trials per method and fidelity, by whether the cluster has GPUs
# (2 trials on 2 cores: one round of two side by side; every method of digits in < 10 min)
BUDGET_CPU, BUDGET_GPU = (2, "laptop"), (24, "full")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Embed, mine neighbours, cluster and rank methods across benchmarks.",
    )
    p.add_argument(
        "--benchmark",
        default="all",
        help="'all' (every benchmark whose data is present), or NAME[,NAME]: "
        f"{', '.join(DATASETS.names())}, parquet:<path>, folder:<path>",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"'all' or METHOD[,METHOD] of: {', '.join(METHODS.names())} (default: all of the "
        f"setting; with --budget 0: {','.join(DEFAULT_METHODS)}, with --setting gcd "
        f"{','.join(DEFAULT_GCD_METHODS)})",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"Tune trials per method (default: {BUDGET_CPU[0]} on a cluster without GPUs, "
        f"{BUDGET_GPU[0]} with); 0 runs each method's configuration without a search",
    )
    p.add_argument(
        "--fidelity",
        default=None,
        choices=FIDELITIES,
        help=f"how long each trial and final run trains (default: {BUDGET_CPU[1]} without GPUs, "
        f"{BUDGET_GPU[1]} with; see search_spaces/budgets.py)",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="a quick end-to-end check: 2 trials per method at smoke fidelity, seed 0",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="rank trials by ground-truth test accuracy (an upper bound, not a result: every "
        "output marks it ORACLE)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted searches (finished trials are kept, never re-run)",
    )
    p.add_argument(
        "--trial-workers",
        type=int,
        default=0,
        help="0 (default): each trial trains in its own Tune process; N: each trial trains "
        "through Ray Train with N DDP workers (GPU clusters, finetuning)",
    )
    add_common_arguments(p, seeds="0,1,2")
    return p


def _check_search_flags(args: argparse.Namespace) -> None:
    if args.budget is not None and args.budget < 0:
        raise UserError(f"--budget must be >= 0 trials, got {args.budget}")
    if args.trial_workers < 0:
        raise UserError(f"--trial-workers must be >= 0, got {args.trial_workers}")
    if args.oracle and args.budget == 0:
        raise UserError("--oracle ranks a search's trials; drop it or give --budget > 0")
    if args.smoke_test:
        args.seeds = split_csv(args.seeds)[0] if split_csv(args.seeds) else "0"


def search_options(args: argparse.Namespace, ray_session, seed: int):
    """The sweep's SearchOptions (None: --budget 0 without --fidelity, no search)."""
    from orchestrator.search import SearchOptions

    if args.budget == 0 and args.fidelity is None and not args.smoke_test:
        return None
    gpus = ray_session.resources().gpus if not args.cpu_workers else 0
    budget, fidelity = BUDGET_GPU if gpus else BUDGET_CPU
    if args.smoke_test:
        budget, fidelity = 2, "smoke"
    budget = budget if args.budget is None else args.budget
    fidelity = args.fidelity or fidelity
    return SearchOptions(
        budget,
        fidelity,
        args.oracle,
        args.resume,
        args.trial_workers,
        seed=seed,
        use_gpus=not args.cpu_workers,
    )


_NOT_FOUND = re.compile(r"dataset '(?P<name>[^']+)' not found at (?P<path>[^;]+); (?P<fix>.+)")


def skipped_lines(skipped: list[tuple[str, str]]) -> list[str]:
    """One line per fix: the benchmarks without data that the same step provides (each with
    the folder it was looked for in) share a line; any other reason stands alone."""
    groups: dict[str, dict[str, list[str]]] = {}  # fix -> path -> names
    lines = []
    for name, reason in skipped:
        match = _NOT_FOUND.fullmatch(reason)
        if match is None:
            lines.append(f"{name}: {reason}")
            continue
        groups.setdefault(match["fix"], {}).setdefault(match["path"], []).append(name)
    for fix, paths in groups.items():
        where = ", ".join(f"{', '.join(names)} ({path})" for path, names in paths.items())
        lines.append(f"{where}: not found; {fix}")
    return lines


def run(args: argparse.Namespace, explicit_root: bool) -> int:
    _check_search_flags(args)
    settings = settings_from_args(args, explicit_root)
    t0 = time.perf_counter()
    ArtifactStore.check_writable(settings.output)  # before any data is read or Ray starts
    chosen, skipped = select_benchmarks(args.benchmark, settings)
    if skipped:  # each with its reason in the summary at the end
        log.info("no data for %s: skipped", ", ".join(name for name, _ in skipped))
    store = ArtifactStore(settings.output)
    if chosen:
        from orchestrator.pipeline import run_benchmark

        ray_session = ray_session_for(args)
        failed: list[str] = []
        degenerate: list[str] = []
        try:
            search = search_options(args, ray_session, settings.seeds[0])
            if search is not None:
                log.info(
                    "search: %d trials per method at %s fidelity%s; TensorBoard: "
                    "tensorboard --logdir %s",
                    search.budget,
                    search.fidelity,
                    " (ORACLE: trials ranked by test labels)" if search.oracle else "",
                    store.root / "tune",
                )
            for splits in chosen:
                log.info(
                    "benchmark %s: fit %s (%d), eval %s (%d)",
                    splits.name,
                    splits.fit.split,
                    len(splits.fit),
                    splits.eval.split,
                    len(splits.eval),
                )
                results = run_benchmark(
                    splits, settings, store, ray_session, search=search, failures=failed
                )
                degenerate += [
                    f"{r['method']} seed {r['seed']} on {splits.name}"
                    for r in results
                    if r.get("degenerate")
                ]
        finally:
            ray_session.close()
    from orchestrator.leaderboard import leaderboard_files, write_leaderboard

    _, markdown = write_leaderboard(store)
    print("\n" + markdown)
    if chosen and failed:
        print("failed (every trial of the search failed; the rest of the sweep ran):")
        for line in failed:
            print(f"  {line}")
    if chosen and degenerate:
        print("degenerate (one cluster holds > 90% of the rows; marked DEGENERATE above):")
        for line in degenerate:
            print(f"  {line}")
    if skipped:
        print("skipped (no data):")
        for line in skipped_lines(skipped):
            print(f"  {line}")
    print(f"leaderboard: {', '.join(str(p) for p in leaderboard_files(store))}")
    print(f"total {time.perf_counter() - t0:.1f}s")
    if not chosen:
        raise UserError("no benchmark has data; see the skipped list above, or pass --data-root")
    if failed or degenerate:
        print(
            f"error: {len(failed)} method search(es) failed and {len(degenerate)} run(s) came "
            "out degenerate (listed above); every other result is in the leaderboard",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
