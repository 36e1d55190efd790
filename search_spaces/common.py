"""Registry of define-by-run search spaces: ``fn(trial, setting) -> dict of config overrides``.

Every name a space suggests is a field of its method's config (a test samples each space and
validates the result with the strict config parser), so a trial's parameters are exactly the
overrides it runs with. Ranges come from the specs: ``shared/spec/unic.md`` section 13 and
``shared/spec/baselines.md``. Neighbour counts stop at the mined ``kmax`` (50 by default; less on small sets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepclust.config import choices
from deepclust.registry import Registry
from trainables.methods.unic import UnicConfig

# fn(trial, setting, kmax, num_clusters): kmax is the mined table's width (neighbour counts
# stop there), num_clusters the benchmark's C
SearchSpace = Callable[..., dict[str, Any]]

SPACES: Registry[SearchSpace] = Registry("search space")
# deviation: spec unic 13 searches pos_k over 5-100 (k_max 100, spec unic 2); the pipeline
# mines 50 neighbours by default (orchestrator.pipeline.DEFAULT_KMAX), so counts stop there.
KMAX = 50  # the pipeline's default mined neighbours (orchestrator.pipeline.DEFAULT_KMAX)


def _none(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    # k-means / SS-k-means: k is fixed by the benchmark, restarts only trade time for inertia.
    return {}


def _unic(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """UNIC, spec 13: neighbourhood, cleaning, negatives, loss weights, lr (+ GCD sources).

    Choice fields searched over all their values (read from the config's Literal types):
    clean_rule, neg_rule and, in GCD, gcd_pos_labelled and gcd_neg_source. Not searched, as
    spec 13 leaves them out (ablation options, defaults kept): head, input_norm, empty_policy,
    pos_weighting, and augment (finetune mode only; searches run cached mode).
    """
    pos_k = trial.suggest_int("pos_k", min(5, kmax), kmax, log=True)
    out: dict[str, Any] = {"pos_k": pos_k}
    out["clean_rule"] = trial.suggest_categorical(
        "clean_rule", list(choices(UnicConfig, "clean_rule"))
    )
    if out["clean_rule"] != "none":
        # spec: clean_m in {pos_k, 2 pos_k} (capped by the mined table); an int range with a
        # step of pos_k, since Optuna's categorical choices cannot depend on another parameter
        top = min(2 * pos_k, kmax)
        out["clean_m"] = trial.suggest_int("clean_m", pos_k, top, step=max(1, top - pos_k))
    if out["clean_rule"] in ("pair_overlap", "votes"):
        out["min_shared_frac"] = trial.suggest_float("min_shared_frac", 0.0, 0.6)
    if out["clean_rule"] == "anchor_spread":
        out["spread_drop_frac"] = trial.suggest_float("spread_drop_frac", 0.0, 0.5)
    out["neg_rule"] = trial.suggest_categorical("neg_rule", list(choices(UnicConfig, "neg_rule")))
    if out["neg_rule"] == "far_rank":
        # spec 13: rho in {0, 2/C, 0.25, 0.5, 0.9, 0.99}; C is fixed within a search (study)
        rhos = sorted({0.0, round(2 / num_clusters, 4), 0.25, 0.5, 0.9, 0.99})
        out["neg_min_rank_frac"] = trial.suggest_categorical("neg_min_rank_frac", rhos)
    if out["neg_rule"] != "none":
        out["n_neg"] = trial.suggest_categorical("n_neg", [1, 4])
        out["w_neg"] = trial.suggest_float("w_neg", 0.1, 3.0, log=True)
    out["w_ent"] = trial.suggest_float("w_ent", 1.0, 10.0)
    out["lr"] = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    if setting == "gcd":
        for name in ("gcd_pos_labelled", "gcd_neg_source"):
            out[name] = trial.suggest_categorical(name, list(choices(UnicConfig, name)))
    return out


def _scan(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """SCAN, baselines 4: k (20 small sets, 50 ImageNet) and the entropy weight (5)."""
    return {
        "num_neighbors": trial.suggest_int("num_neighbors", min(5, kmax), kmax, log=True),
        "entropy_weight": trial.suggest_float("entropy_weight", 1.0, 10.0),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
    }


def _selflabel(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """SCAN self-labelling, baselines 4.7: the confidence threshold (0.99)."""
    return {"threshold": trial.suggest_float("threshold", 0.9, 0.999)}


def _temi(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """TEMI, baselines 3: k, beta (0.6), teacher temperature and momentum."""
    return {
        "num_neighbors": trial.suggest_int("num_neighbors", min(5, kmax), kmax, log=True),
        "beta": trial.suggest_float("beta", 0.3, 1.0),
        "teacher_temp": trial.suggest_float("teacher_temp", 0.04, 0.2, log=True),
        "teacher_momentum": trial.suggest_float("teacher_momentum", 0.99, 0.9995),
    }


def _iic(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """IIC, baselines 5: overclustering factor (0 = off, else 5-10x C) and lambda (1-1.5)."""
    return {
        "overcluster_factor": trial.suggest_categorical("overcluster_factor", [0, 5, 7, 10]),
        "lam": trial.suggest_float("lam", 1.0, 2.0),
        "num_neighbors": trial.suggest_int("num_neighbors", min(5, kmax), kmax, log=True),
    }


def _spice(
    trial: Any, setting: str = "clustering", kmax: int = KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """SPICE, baselines 6: the consistency ratio eta (0.9-0.99 in SPICE's configs) and the
    reliable-neighbour count N_s (the sample included, at most kmax + 1)."""
    # deviation: eta is searched from 0.5, below the configs' 0.9 / 0.99, so a set where few
    # rows reach 0.9 agreement on cached embeddings still gets a reliable set; the label-free
    # objective decides between them.
    return {
        "consistency_ratio": trial.suggest_float("consistency_ratio", 0.5, 0.99),
        "reliable_neighbors": trial.suggest_int(
            "reliable_neighbors", min(5, kmax), kmax + 1, log=True
        ),
        "confidence_threshold": trial.suggest_float("confidence_threshold", 0.9, 0.999),
    }


def is_empty(method: str) -> bool:
    """True when ``method`` has nothing to search (its runs use the fidelity's config)."""
    return SPACES.get(method) is _none


SPACES.add("kmeans", _none)
SPACES.add("sskmeans", _none)
SPACES.add("unic", _unic)
SPACES.add("scan", _scan)
SPACES.add("scan_selflabel", _selflabel)
SPACES.add("temi", _temi)
SPACES.add("iic", _iic)
SPACES.add("spice", _spice)
