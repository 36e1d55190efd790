"""UNIC: positive-neighbour sampling with second-order cleaning, negative-neighbour mining and a
single clustering head (Jayatilaka, Shrivastava, Gwilliam, arXiv 2503.14500, 2025).

Design and every choice the paper leaves open: docs/methods.md, UNIC (sections cited inline).
Two modes on the one loop: **cached** (a head on frozen embeddings; what sweeps run) and
**finetune** (the last backbone blocks + the head, on augmented images, warm-started from a
cached-mode head).
Labels are never read (``uses_labels = False``; the runner strips them).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from deepclust.config import CheckedChoices, Count, Fraction, Rate, choices
from deepclust.errors import UserError
from deepclust.neighbors import (
    CleanRule,
    LabelledPool,
    NegativeSampler,
    NegRule,
    PositiveTable,
    clean_positives,
    label_veto,
    negative_thresholds,
)
from trainables import loop
from trainables.finetune import Augment
from trainables.heads import ClusterHead, HeadKind, InputNorm, MultiHead
from trainables.losses.neighbors import neighbor_clustering_loss, pair_nll, probs, supervised_term
from trainables.methods.base import DEFAULT_KMAX, CachedPlan, FitInputs, HeadMethod

log = logging.getLogger(__name__)

EmptyPolicy = Literal["skip", "self", "top1"]
PosWeighting = Literal["uniform", "shared"]
GcdPosSource = Literal["labels", "labels+mined", "mined"]
GcdNegSource = Literal["mined", "labels", "both"]


@dataclass(frozen=True)
class UnicConfig(CheckedChoices):
    # --- positives (docs/methods.md, UNIC: positives and UNIC: cleaning) ---
    pos_k: Count | None = None  # None: min(20, N // (2C)), half the expected class size at most
    clean_rule: CleanRule = "pair_overlap"
    clean_m: Count | None = None  # second-order list length; None: pos_k
    min_shared_frac: Fraction = 0.2  # sigma; keeps pairs sharing >= ceil(sigma * m) neighbours
    spread_drop_frac: Fraction = 0.2  # anchor_spread only
    empty_policy: EmptyPolicy = "skip"  # skip masks the positive term; self; top1
    pos_weighting: PosWeighting = "uniform"  # shared: probability ~ shared count
    # --- negatives (docs/methods.md, UNIC: negatives) ---
    neg_rule: NegRule = "far_rank"
    neg_min_rank_frac: Fraction = 0.9  # rho: negatives come from outside the nearest rho*(N-1)
    neg_exclude_shared: bool = True
    n_neg: Count = 1
    neg_ref_size: Count = 4096  # reference sample for the rank threshold
    neg_tries: Count = 8
    # --- loss (docs/methods.md, UNIC: loss) ---
    w_pos: float = 1.0
    w_neg: float = 1.0
    w_ent: float = 5.0  # SCAN's entropy weight
    # --- head (docs/methods.md, UNIC: head) ---
    # deviation: the design's default head is Linear(d, C) with "mlp" for ablations. The MLP
    # (d -> 512 -> C, GELU) was chosen on the dev set (5,000 GCD-labelled CIFAR-10 train
    # images, never scored; K=5, k-means 64.74): bench/dev_defaults.py, one head, ACC seeds
    # 0 / 1 / 2: mlp 77.94 / 76.28 / 70.36 (74.86 +- 3.25), linear 74.50 / 55.68 / 60.42
    # (63.53 +- 7.99); the MLP is ahead on every seed.
    head: HeadKind = "mlp"
    input_norm: InputNorm = "l2"
    # One head, as the paper. num_heads > 1 trains that many restarts side by side on the same
    # batches and keeps the one with the lowest label-free selection score (section 10), as
    # SCAN keeps its lowest-loss head. It is off by default, as in the paper (R restarts cost
    # R times one); no accuracy on any data chose this default.
    num_heads: Count = 1
    # --- cached-mode training (docs/methods.md, UNIC: training) ---
    lr: Rate = 1e-3
    weight_decay: float = 1e-4
    # deviation: the design trains 512 anchors per step for at least 20k steps. A fixed 512 is
    # most of a small set (1,797 digits: 4 steps per epoch), so the batch scales with N,
    # clamp(N // 80, 32, 512), reaching the design's 512 from N = 40,960 on; and with those
    # smaller batches 8000 steps (at least 100 epochs) stand in for 20k to keep CPU runs short.
    # A scale rule in N set for small sets and run time, not tuned on any label.
    batch_size: Count | None = None  # None: clamp(N // 80, 32, 512) anchors per step
    epochs: Count | None = None  # None: 100 epochs over the anchors, at least min_steps steps
    min_steps: int = 8000  # small sets need many small steps to converge
    # bf16 autocast while training on a CPU with native bf16 units (fp32 elsewhere; CUDA always
    # autocasts): laptop fidelity turns it on (search_spaces/budgets.py)
    cpu_bf16: bool = False
    # --- finetune mode (docs/methods.md, UNIC: finetune mode) ---
    finetune: bool = False
    unfreeze_last_blocks: int = 1
    ft_lr: Rate = 0.1
    ft_weight_decay: float = 5e-5
    ft_batch_size: Count = 128
    ft_epochs: Count = 50
    augment: Augment = "simgcd"
    init_head_from_cached: bool = True
    # deviation: the design's refresh_neighbors_every option (re-mine every n epochs) is not
    # implemented; its default, never re-mine, is what runs.
    # --- GCD (docs/methods.md, UNIC: GCD mode; used only when labelled images are given) ---
    # labelled anchors' positives: same-label labelled rows, both lists, or mined only.
    # deviation: "labels+mined" draws uniformly from the concatenation of the two lists, so a
    # row in both counts twice (the design asks for their union); it keeps the draw O(1) per anchor.
    gcd_pos_labelled: GcdPosSource = "labels"
    # labels: other-label labelled rows (labelled anchors only); both: a 50/50 mix
    gcd_neg_source: GcdNegSource = "mined"
    gcd_label_constraints: bool = True  # labels veto mined positives/negatives that contradict
    # weight of a CE on labelled anchors, Old class i (in sorted order) fixed to cluster i
    w_sup: float = 0.0
    # deviation: the design's balance_labelled option (SimGCD's sampler weighting labelled and
    # unlabelled images equally) is not implemented; its default, uniform anchors, runs.


def resolve_scale(cfg: UnicConfig, n: int, num_clusters: int, kmax: int) -> UnicConfig:
    """Fill the N- and C-dependent defaults (neighbour count, batch size, epochs)."""
    pos_k = cfg.pos_k or max(1, min(20, n // (2 * num_clusters), kmax))
    batch = cfg.batch_size or int(np.clip(n // 80, 32, 512))
    batch = min(batch, n)
    steps_per_epoch = max(1, math.ceil(n / batch))
    epochs = cfg.epochs or max(100, math.ceil(cfg.min_steps / steps_per_epoch))
    return replace(cfg, pos_k=pos_k, clean_m=cfg.clean_m or pos_k, batch_size=batch, epochs=epochs)


def validate(cfg: UnicConfig, kmax: int, num_clusters: int) -> None:
    """One-line errors naming the field (docs/methods.md, UNIC: errors). Choice fields are
    checked by their Literal types when the config is built (deepclust.config.check_choices)."""
    if num_clusters < 2:
        raise UserError(f"num_clusters={num_clusters}: UNIC needs at least 2 clusters")
    for name in ("pos_k", "clean_m"):
        if getattr(cfg, name) > kmax:
            raise UserError(
                f"{name}={getattr(cfg, name)} exceeds kmax={kmax}; mine more "
                "neighbours (--kmax) or lower it"
            )


class PairSampler:
    """Draws (anchor, positive, negatives, mask) index batches from the cleaned tables."""

    def __init__(
        self,
        cfg: UnicConfig,
        positives: PositiveTable,
        nbr: np.ndarray,
        negatives: NegativeSampler | None,
        labelled: LabelledPool | None = None,
    ) -> None:
        self.cfg = cfg
        self.labelled = labelled  # GCD: labelled rows act as ground-truth neighbours
        self.idx = torch.from_numpy(positives.idx)
        self.count = torch.from_numpy(positives.count)
        self.weight = torch.from_numpy(positives.shared).float().clamp(min=1e-3)
        self.top1 = torch.from_numpy(np.ascontiguousarray(nbr[:, 0]))
        self.negatives = negatives
        if cfg.empty_policy == "skip" and int(self.count.sum()) == 0:
            raise UserError(
                "cleaning left no positive pair at all; lower min_shared_frac "
                "or use clean_rule=none"
            )

    def sample(self, batch: int, gen: torch.Generator) -> dict[str, Tensor]:
        n = len(self.count)
        anchors = torch.randint(0, n, (batch,), generator=gen)
        count = self.count[anchors]
        if self.cfg.pos_weighting == "shared":
            w = self.weight[anchors] * (torch.arange(self.idx.shape[1]) < count[:, None])
            slot = torch.multinomial(w + (count[:, None] == 0), 1, generator=gen).squeeze(1)
        else:
            slot = (torch.rand(batch, generator=gen) * count.clamp(min=1)).long()
        positives = self.idx[anchors, slot]
        mask = count > 0
        if self.cfg.empty_policy == "top1":
            positives = torch.where(mask, positives, self.top1[anchors])
            mask = torch.ones_like(mask)
        else:  # skip (masked) or self (an anchor/self pair, unmasked)
            positives = torch.where(mask, positives, anchors)
            mask = mask | (self.cfg.empty_policy == "self")
        if self.labelled is not None and self.cfg.gcd_pos_labelled != "mined":
            same, valid = self.labelled.positives(anchors, gen)
            if self.cfg.gcd_pos_labelled == "labels+mined":
                n_lab = self.labelled.same_label_count(anchors).float()
                n_mined = count.float()  # cleaned mined positives of the anchor
                pick = torch.rand(len(anchors), generator=gen) * (n_lab + n_mined) < n_lab
                valid = valid & pick
            positives, mask = torch.where(valid, same, positives), mask | valid
        out = {"anchor": anchors, "positive": positives, "pos_mask": mask}
        if self.labelled is not None and self.cfg.w_sup:
            out["anchor_target"] = self.labelled.cluster_of(anchors)
        if self.negatives is not None:
            neg = self.negatives.sample(anchors, self.cfg.n_neg, gen)
            if self.labelled is not None and self.cfg.gcd_neg_source != "mined":
                other, valid = self.labelled.negatives(anchors, self.cfg.n_neg, gen)
                if self.cfg.gcd_neg_source == "both":
                    valid = valid & (torch.rand(valid.shape, generator=gen) < 0.5)
                neg = torch.where(valid, other, neg)
            out["negative"] = neg
        return out


class _CachedSteps:
    """Batches of embedding rows for the head."""

    def __init__(
        self, sampler: PairSampler, features: Tensor, batch: int, seed: int, rank: int
    ) -> None:
        self.sampler, self.features, self.batch = sampler, features, batch
        self.seed, self.rank = seed, rank

    def batches(self, epoch: int, steps: int) -> Iterator[dict[str, Tensor]]:
        gen = loop.epoch_generator(self.seed, self.rank, epoch)
        for _ in range(steps):
            ids = self.sampler.sample(self.batch, gen)
            out = {
                "anchor": self.features[ids["anchor"]],
                "positive": self.features[ids["positive"]],
                "pos_mask": ids["pos_mask"],
            }
            if "negative" in ids:
                out["negative"] = self.features[ids["negative"].flatten()]
            if "anchor_target" in ids:
                out["anchor_target"] = ids["anchor_target"]
            yield out

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        return unic_step(model, batch, self.sampler.cfg)


def unic_step(model: nn.Module, batch: dict[str, Tensor], cfg: UnicConfig) -> tuple[Tensor, dict]:
    """One forward over [anchors; positives; negatives] and the UNIC loss (docs/methods.md,
    UNIC: loss).

    # deviation: under DDP the entropy term uses each worker's local batch mean, not the
    # design's all-gathered global mean (identical with one worker; close for large batches).
    """
    anchors, positives = batch["anchor"], batch["positive"]
    parts = [anchors, positives] + ([batch["negative"]] if "negative" in batch else [])
    logits = model(torch.cat(parts))
    heads = logits if logits.ndim == 3 else logits[None]  # (R, 2B + B*n_neg, C)
    b = len(anchors)
    total, sums = 0.0, {}
    # Restarts share the batch; losses are summed so each head gets its own full gradient
    # (a mean would shrink it by R and let weight decay dominate); logs are averaged.
    for out in heads:
        neg = out[2 * b :].view(b, -1, out.shape[-1]) if "negative" in batch else None
        loss, logs = neighbor_clustering_loss(
            out[:b], out[b : 2 * b], neg, batch["pos_mask"], cfg.w_pos, cfg.w_neg, cfg.w_ent
        )
        if "anchor_target" in batch:
            l_sup = supervised_term(out[:b], batch["anchor_target"])
            loss = loss + cfg.w_sup * l_sup
            logs["loss/sup"] = float(l_sup.detach())
        total = total + loss
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v / len(heads)
    return total, sums


def _search_space(
    trial: Any, setting: str = "clustering", kmax: int = DEFAULT_KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """UNIC (docs/methods.md, UNIC: search space): neighbourhood, cleaning, negatives, loss
    weights, lr (+ GCD sources).

    Choice fields searched over all their values (read from the config's Literal types):
    clean_rule, neg_rule and, in GCD, gcd_pos_labelled and gcd_neg_source. Not searched
    (ablation options, defaults kept): head, input_norm, empty_policy,
    pos_weighting, and augment (finetune mode only; searches run cached mode).
    """
    pos_k = trial.suggest_int("pos_k", min(5, kmax), kmax, log=True)
    out: dict[str, Any] = {"pos_k": pos_k}
    out["clean_rule"] = trial.suggest_categorical(
        "clean_rule", list(choices(UnicConfig, "clean_rule"))
    )
    if out["clean_rule"] != "none":
        # clean_m in {pos_k, 2 pos_k} (capped by the mined table); an int range with a
        # step of pos_k, since Optuna's categorical choices cannot depend on another parameter
        top = min(2 * pos_k, kmax)
        out["clean_m"] = trial.suggest_int("clean_m", pos_k, top, step=max(1, top - pos_k))
    if out["clean_rule"] in ("pair_overlap", "votes"):
        out["min_shared_frac"] = trial.suggest_float("min_shared_frac", 0.0, 0.6)
    if out["clean_rule"] == "anchor_spread":
        out["spread_drop_frac"] = trial.suggest_float("spread_drop_frac", 0.0, 0.5)
    out["neg_rule"] = trial.suggest_categorical("neg_rule", list(choices(UnicConfig, "neg_rule")))
    if out["neg_rule"] == "far_rank":
        # rho in {0, 2/C, 0.25, 0.5, 0.9, 0.99}; C is fixed within a search (study)
        rhos = sorted({0.0, round(2 / num_clusters, 4), 0.25, 0.5, 0.9, 0.99})
        out["neg_min_rank_frac"] = trial.suggest_categorical("neg_min_rank_frac", rhos)
    if out["neg_rule"] != "none":
        out["n_neg"] = trial.suggest_categorical("n_neg", [1, 4])
        out["w_neg"] = trial.suggest_float("w_neg", 0.1, 3.0, log=True)
    # deviation: the entropy weight is SCAN's fixed 5; searched below it as well, a search can
    # weaken the uniform prior where its label-free objective prefers (long tails)
    out["w_ent"] = trial.suggest_float("w_ent", 1.0, 10.0)
    out["lr"] = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    if setting == "gcd":
        for name in ("gcd_pos_labelled", "gcd_neg_source"):
            out[name] = trial.suggest_categorical(name, list(choices(UnicConfig, name)))
    return out


class Unic(HeadMethod):
    Config = UnicConfig
    needs = frozenset({"embeddings", "neighbors"})
    # docs/methods.md, UNIC: model selection: raw top-5 consistency + random-partner
    # separation - H(mean prediction)
    objective = "selection_score"
    search_objective = ("selection_score", "min")  # fixed anchors, raw top-5: config-free
    reports_objective = True
    smoke = {"epochs": 10, "num_heads": 2}
    gcd_labels = True  # GCD: labelled images are ground-truth neighbours (UNIC: GCD mode)
    # deviation: laptop fidelity (CPU-only clusters) drops the 8,000-step floor of small sets
    # (the run keeps its 100 epochs) and trains in bf16 autocast (search_spaces/budgets.py)
    laptop = {"min_steps": 0, "cpu_bf16": True}
    search_space = staticmethod(_search_space)

    def _prepare(self, inputs: FitInputs) -> tuple[UnicConfig, PairSampler]:
        n, kmax = inputs.neighbors.shape
        cfg = resolve_scale(self.config, n, inputs.num_clusters, kmax)
        validate(cfg, kmax, inputs.num_clusters)
        labels, labelled, veto = None, None, None
        if inputs.labelled_idx is not None and len(inputs.labelled_idx):  # GCD
            labels = np.full(n, -1, dtype=np.int64)
            labels[inputs.labelled_idx] = inputs.labelled_y
            labelled = LabelledPool(labels)
            if cfg.gcd_label_constraints:
                veto = label_veto(inputs.neighbors[:, : cfg.pos_k], labels)
        positives = clean_positives(
            inputs.neighbors,
            cfg.pos_k,
            cfg.clean_rule,
            m=cfg.clean_m,
            min_shared_frac=cfg.min_shared_frac,
            spread_drop_frac=cfg.spread_drop_frac,
            veto=veto,
        )
        negatives = None
        if cfg.neg_rule != "none" and cfg.w_neg:
            rho = cfg.neg_min_rank_frac if cfg.neg_rule == "far_rank" else 0.0
            thresholds = negative_thresholds(
                inputs.embeddings, rho, cfg.neg_ref_size, seed=inputs.seed
            )
            negatives = NegativeSampler(
                inputs.embeddings,
                inputs.neighbors,
                thresholds,
                cfg.pos_k,
                cfg.clean_m,
                cfg.neg_exclude_shared and cfg.neg_rule == "far_rank",
                cfg.neg_tries,
                labels if cfg.gcd_label_constraints else None,
            )
        self.diagnostics = {
            "pos_k": cfg.pos_k,  # resolved (None in the config means a size-based default)
            "kept_pair_frac": positives.kept_fraction(),
            "empty_anchor_frac": positives.empty_fraction(),
        }
        if veto is not None:
            self.diagnostics["gcd_vetoed_pair_frac"] = float(veto.mean())
        self.positives = positives
        self.resolved = cfg
        return cfg, PairSampler(cfg, positives, inputs.neighbors, negatives, labelled)

    def check(self, inputs: FitInputs) -> None:
        if self.config.finetune and (inputs.images is None or inputs.backbone is None):
            raise UserError("finetune mode needs the fit split's images and backbone name")

    def plan(self, inputs: FitInputs, hooks: loop.LoopHooks) -> CachedPlan:
        cfg, sampler = self._prepare(inputs)
        if hooks.want_objective and not cfg.finetune:  # a search reads it at every report
            hooks = replace(hooks, evaluate=lambda model: self._report_score(model, inputs))
        features = torch.from_numpy(inputs.embeddings)
        heads = []
        for _ in range(cfg.num_heads):
            one = ClusterHead(features.shape[1], inputs.num_clusters, cfg.head, cfg.input_norm)
            one.fit_standardization(features)
            heads.append(one)
        head = MultiHead(heads) if cfg.num_heads > 1 else heads[0]
        batch = max(1, cfg.batch_size // hooks.world_size)
        self.cached = _CachedSteps(sampler, features, batch, inputs.seed, hooks.world_rank)
        config = loop.LoopConfig(
            epochs=cfg.epochs,
            steps_per_epoch=math.ceil(len(features) / cfg.batch_size),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            report_every=max(1, cfg.epochs // 10),  # ~10 checkpoints: cached epochs are short
            cpu_amp=cfg.cpu_bf16,
        )
        # finetune mode: the heads warm-start on embeddings (same seed on every worker:
        # identical warm starts) unless init_head_from_cached is off
        train = not cfg.finetune or cfg.init_head_from_cached
        return CachedPlan(head, self.cached, config, hooks, train)

    def select(self, trained: nn.Module, inputs: FitInputs) -> dict[str, float]:
        if self.resolved.finetune and not self.resolved.init_head_from_cached:
            # no warm start: keep the first restart
            self.model = trained.heads[0] if isinstance(trained, MultiHead) else trained
        else:
            self.model = self._select_head(trained, inputs)
        if not self.resolved.finetune:
            self.diagnostics[self.objective] = self.selection_score(inputs)
        return dict(self.diagnostics)

    def _report_score(self, model: nn.Module, inputs: FitInputs) -> dict[str, float]:
        """The selection score of the best restart so far (what ``_select_head`` would keep):
        comparable across epochs and configurations, so ASHA can stop a trial on it."""
        kept = getattr(self, "model", None)
        heads = model.heads if isinstance(model, MultiHead) else [model]
        scores = []
        for head in heads:
            self.model = copy.deepcopy(head).cpu().eval()  # never touch the training copy
            scores.append(self.selection_score(inputs))
        self.model = kept
        return {self.objective: min(scores)}

    def _select_head(self, trained: nn.Module, inputs: FitInputs) -> ClusterHead:
        """The restart with the lowest label-free selection score (ties: lowest index)."""
        trained = trained.cpu().eval()
        if not isinstance(trained, MultiHead):
            return trained
        scores = []
        for head in trained.heads:
            self.model = head
            scores.append(self.selection_score(inputs))
        best = int(np.argmin(scores))
        finite = [s for s in scores if math.isfinite(s)]
        self.diagnostics.update(
            selected_head=best, score_spread=float(np.ptp(finite)) if finite else 0.0
        )
        return trained.heads[best]

    def finetune(self, inputs: FitInputs, hooks: loop.LoopHooks) -> dict[str, float]:
        """docs/methods.md, UNIC: finetune mode: the last backbone blocks + the (warm-started)
        head on augmented images of anchors, positives and negatives; scored as it predicts:
        the head on the finetuned backbone's features of the fit images."""
        from trainables.finetune import embed_images, finetune_model

        cfg, cached = self.resolved, self.cached

        def sample(batch: int, gen: torch.Generator) -> dict[str, Tensor]:
            ids = cached.sampler.sample(batch, gen)
            if "negative" in ids:
                ids["negative"] = ids["negative"].flatten()
            return ids

        views = dict.fromkeys(("anchor", "positive", "negative"), cfg.augment)
        self.model = finetune_model(
            self.model,
            inputs,
            cfg,
            hooks,
            sample,
            views,
            lambda m, b: unic_step(m, b, cfg),
            optimizer="sgd",
            schedule="cosine",
        )
        features = embed_images(self.model, inputs.images)
        self.diagnostics[self.objective] = self.selection_score(inputs, features)
        return dict(self.diagnostics)

    def predict_images(self, images, batch_size: int = 64) -> np.ndarray:
        """Cluster ids of an ImageSet through the finetuned backbone + head (eval geometry)."""
        from trainables.finetune import embed_images

        feats = embed_images(self.model, images, batch_size)
        return self.predict(feats)

    @torch.no_grad()
    def predict_proba(self, embeddings: np.ndarray) -> Tensor:
        head = self.model.head if hasattr(self.model, "head") else self.model
        return probs(head(torch.from_numpy(np.ascontiguousarray(embeddings))))

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self.predict_proba(embeddings).argmax(1).numpy().astype(np.int64)

    @torch.no_grad()
    def selection_score(self, inputs: FitInputs, features: np.ndarray | None = None) -> float:
        """Label-free model selection (docs/methods.md, UNIC: model selection); lower is better.

        Fixed 10k anchors (seed 0): mean -log<p_i, p_j> over raw top-5 neighbours (of the mined
        table), plus -log(1 - <p_i, p_r>) for one fixed random partner, minus H(mean p).
        Degenerate runs (cluster-size entropy < 0.9 log C, or an empty cluster) score +inf.
        ``features``: (N, D) what the head reads for the fit split (finetune mode: the finetuned
        backbone's features); None: the cached embeddings.
        """
        p = self.predict_proba(inputs.embeddings if features is None else features)
        n, c = p.shape
        rng = np.random.default_rng(0)
        anchors = torch.from_numpy(rng.choice(n, min(n, 10_000), replace=False))
        partner = torch.from_numpy(rng.integers(0, n, len(anchors)))
        top5 = torch.from_numpy(inputs.neighbors[anchors.numpy(), :5])
        pa = p[anchors]
        pos = pair_nll((pa[:, None, :] * p[top5]).sum(-1), same=True).mean()
        neg = pair_nll((pa * p[partner]).sum(-1), same=False).mean()
        pbar = p.mean(0)
        entropy = -(pbar * pbar.clamp(min=1e-8).log()).sum()
        sizes = np.bincount(p.argmax(1).numpy(), minlength=c) / n
        size_entropy = -(sizes[sizes > 0] * np.log(sizes[sizes > 0])).sum()
        if (sizes == 0).any() or size_entropy < 0.9 * math.log(c):
            return math.inf
        return float(pos + neg - entropy)
