"""How well a label-free search objective ranks configurations, on development data.

    OMP_NUM_THREADS=1 python bench/objective_check.py                 # temi, iic, spice
    OMP_NUM_THREADS=1 python bench/objective_check.py --only iic --configs 4

Data: the development set of ``bench/dev_defaults.py`` (5,000 GCD-labelled CIFAR-10 train
images, never an evaluation set; K = 5), embedded once and cached there. For each method that
searches by ``neighbor_agreement``, its default configuration and ``--configs`` configurations
drawn from its search space (Optuna's RandomSampler, seed 0) train at laptop fidelity (seed 0).
The table prints, per configuration, ACC (labels used only here, to judge the objective), the
partition's cluster-size entropy H / log K, and two variants of the objective:

* ``chance-corrected``: P(same cluster | raw top-5 neighbour) - P(same cluster | random pair);
* ``with cliff``: the same, but -1 for a partition with an empty cluster or H < 0.9 log K.

Below each table: Kendall's tau between each variant and ACC, and the ACC of the configuration
each variant selects (ties: the first, i.e. the default).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dev_defaults import K, add_dev_set_arguments, load_dev_set  # noqa: E402


def with_cliff(pred: np.ndarray, score: float, k: int) -> float:
    sizes = np.bincount(pred, minlength=k) / len(pred)
    used = sizes[sizes > 0]
    if (sizes == 0).any() or -(used * np.log(used)).sum() < 0.9 * math.log(k):
        return -1.0
    return score


def kendall(a: list[float], b: list[float]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s / (n * (n - 1) / 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dev_set_arguments(parser)
    parser.add_argument("--configs", type=int, default=5)
    parser.add_argument("--only", default="temi,iic,spice")
    args = parser.parse_args()

    import optuna
    import torch

    from deepclust.config import from_dict
    from deepclust.metrics import hungarian_acc
    from deepclust.selection import neighbor_agreement
    from search_spaces import SPACES, fidelity_overrides
    from trainables.methods import METHODS, FitInputs

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dev_set(args.cache, args.data_root, args.n)
    for name in args.only.split(","):
        cls = METHODS.get(name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        configs = [{}]
        for _ in range(args.configs):
            configs.append(SPACES.get(name)(study.ask(), "clustering", 50, K))
        print(f"### {name} (dev set, K={K}, seed 0, laptop fidelity)\n")
        print("| config | ACC | H / log K | chance-corrected | with cliff | s |")
        print("| --- | --- | --- | --- | --- | --- |")
        accs, plain, cliff = [], [], []
        for cfg in configs:
            method = cls(from_dict(cls.Config, {**fidelity_overrides(name, "laptop"), **cfg}))
            t0 = time.perf_counter()
            method.fit(FitInputs(data["feats"], K, 0, data["nbr"]))
            pred = method.predict(data["feats"])
            sizes = np.bincount(pred, minlength=K) / len(pred)
            used = sizes[sizes > 0]
            h = float(-(used * np.log(used)).sum() / math.log(K))
            accs.append(hungarian_acc(data["labels"], pred))
            plain.append(neighbor_agreement(pred, data["nbr"], K))
            cliff.append(with_cliff(pred, plain[-1], K))
            shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in cfg.items()}
            print(
                f"| {shown or 'default'} | {100 * accs[-1]:.2f} | {h:.2f} | {plain[-1]:.3f} "
                f"| {cliff[-1]:.3f} | {time.perf_counter() - t0:.0f} |",
                flush=True,
            )
        for label, vals in (("chance-corrected", plain), ("with cliff", cliff)):
            pick = int(np.argmax(vals))
            print(
                f"\n{label}: Kendall tau with ACC {kendall(vals, accs):+.2f}; selects "
                f"config {pick} (ACC {100 * accs[pick]:.2f}; best ACC {100 * max(accs):.2f})"
            )
        print()


if __name__ == "__main__":
    main()
