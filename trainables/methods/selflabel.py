"""SCAN's self-labelling stage, registered as ``scan_selflabel``: starts from the SCAN run's
selected head and trains on its own confident predictions (Van Gansbeke et al., ECCV 2020,
Sec. 3.3; docs/methods.md, SCAN self-labelling).

Cached-embedding mode has no image augmentation, so the "strong" view is feature dropout on
the embedding (see the deviation note on ``strong_dropout``). Finetune mode
(``finetune=True``) is the paper's: the weak view is the eval transform of the image, the
strong view an augmented image (``augment``), through the backbone's last blocks and the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.config import Count, Fraction, Rate
from deepclust.errors import UserError
from trainables import loop
from trainables.finetune import FinetuneOptions, embed_images, finetune_model
from trainables.heads import ClusterHead
from trainables.losses.scan import confidence_mask, selflabel_loss
from trainables.methods.base import DEFAULT_KMAX, CachedPlan, FitInputs, HeadMethod
from trainables.methods.scan import Scan
from trainables.pairs import dropout, scan_selection_loss


@dataclass(frozen=True)
class SelfLabelConfig(FinetuneOptions):
    threshold: Fraction = 0.99  # confidence above which a prediction becomes a pseudo-label
    balanced: bool = True  # class-balanced cross-entropy (CIFAR/STL configs)
    # deviation: SCAN's strong view is RandAugment + Cutout of the image; on cached embeddings
    # the strong view is dropout on the embedding (rate below), the weak view the embedding.
    strong_dropout: Fraction = 0.5
    lr: Rate = 1e-4  # Adam, as SCAN's CIFAR self-label config
    weight_decay: float = 1e-4
    batch_size: Count = 1000
    # deviation: 200 epochs (SCAN's CIFAR config), but at least min_steps steps: a set of at
    # most 1,000 rows has one batch per epoch and gets 400 epochs (a rule in N, as the other
    # stages).
    epochs: Count = 200
    min_steps: int = 400


class _Steps:
    def __init__(self, cfg: SelfLabelConfig, features: Tensor, batch: int, seed: int, rank: int):
        self.cfg, self.features, self.batch, self.seed, self.rank = cfg, features, batch, seed, rank

    def batches(self, epoch: int, steps: int):
        gen = loop.epoch_generator(self.seed, self.rank, epoch)
        for _ in range(steps):
            rows = torch.randint(0, len(self.features), (self.batch,), generator=gen)
            x = self.features[rows]
            yield {"weak": x, "strong": dropout(x, self.cfg.strong_dropout, gen)}

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        return _selflabel_step(model, batch, self.cfg)


def _selflabel_step(
    model: nn.Module, batch: dict[str, Tensor], cfg: SelfLabelConfig
) -> tuple[Tensor, dict]:
    with torch.no_grad():
        weak = model(batch["weak"])
    strong = model(batch["strong"])
    if not bool(confidence_mask(weak, cfg.threshold)[0].any()):
        # deviation: SCAN's loss raises when no row of a batch passes the threshold
        # (docs/methods.md, SCAN self-labelling: deviations). A step with no confident row is
        # skipped (zero loss, no gradient) rather than failing the run; fit() still refuses a
        # start with no confident row at all.
        return strong.sum() * 0.0, {"selflabel/confident_frac": 0.0}
    return selflabel_loss(weak, strong, cfg.threshold, cfg.balanced)


def _search_space(
    trial: Any, setting: str = "clustering", kmax: int = DEFAULT_KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    """SCAN self-labelling (docs/methods.md, SCAN self-labelling: search space): the confidence
    threshold (0.99)."""
    return {"threshold": trial.suggest_float("threshold", 0.9, 0.999)}


class ScanSelfLabel(HeadMethod):
    Config = SelfLabelConfig
    needs = frozenset({"embeddings", "neighbors", "init_state"})
    starts_from = "scan"
    objective = "scan_selection"  # the same label-free score as SCAN, on the final head
    search_objective = ("scan_selection", "min")
    smoke = {"epochs": 5, "min_steps": 10, "threshold": 0.3}
    laptop = {}  # laptop fidelity (CPU-only clusters) trains as full
    search_space = staticmethod(_search_space)

    def check(self, inputs: FitInputs) -> None:
        if inputs.init_state is None:
            raise UserError(
                "scan_selflabel starts from a SCAN run; run it with --methods scan first"
            )
        if inputs.init_state.get("finetuned"):
            raise UserError(
                "scan_selflabel starts from a cached-mode SCAN head; drop scan.finetune "
                "(finetune the self-label stage itself with --finetune)"
            )
        if not 0.0 <= self.config.strong_dropout < 1.0:
            raise UserError(f"strong_dropout must be in [0, 1), got {self.config.strong_dropout}")

    def plan(self, inputs: FitInputs, hooks: loop.LoopHooks) -> CachedPlan:
        """SCAN's head, trained on cached embeddings (weak view = the embedding, strong view =
        dropout on it), or, in finetune mode, passed on untrained to ``finetune`` (the
        paper's mode: weak = eval view, strong = augmented image)."""
        cfg = self.config
        features = torch.from_numpy(inputs.embeddings)
        head = ClusterHead(features.shape[1], inputs.num_clusters, inputs.init_state["kind"], "l2")
        head.load_state_dict(inputs.init_state["head"])
        with torch.no_grad():
            start_conf = F.softmax(head(features), -1).max(-1).values
        self.confident_start = float((start_conf > cfg.threshold).float().mean())
        if self.confident_start == 0.0:
            raise UserError(
                f"no SCAN prediction is more confident than threshold={cfg.threshold} "
                f"(max {float(start_conf.max()):.3f}); lower it with --set threshold=..."
            )
        batch = min(len(features), cfg.batch_size)
        steps_per_epoch = -(-len(features) // batch)
        self.epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))  # small sets
        steps = _Steps(
            cfg, features, max(1, batch // hooks.world_size), inputs.seed, hooks.world_rank
        )
        config = loop.cached_config(self.epochs, steps_per_epoch, cfg.lr, cfg.weight_decay)
        return CachedPlan(head, steps, config, hooks, train=not cfg.finetune)

    def select(self, trained: nn.Module, inputs: FitInputs) -> dict[str, float]:
        self.model = trained  # one head
        return self._diagnostics(inputs, inputs.embeddings, self.epochs)

    def finetune(self, inputs: FitInputs, hooks: loop.LoopHooks) -> dict[str, float]:
        cfg, n = self.config, len(inputs.embeddings)

        def sample(b: int, gen: torch.Generator) -> dict[str, Tensor]:
            rows = torch.randint(0, n, (b,), generator=gen)
            return {"weak": rows, "strong": rows}

        self.finetuned = finetune_model(
            self.model,
            inputs,
            cfg,
            hooks,
            sample,
            {"weak": "none", "strong": cfg.augment},
            lambda m, b: _selflabel_step(m, b, cfg),
        )
        self.model = self.finetuned.head
        feats = embed_images(self.finetuned, inputs.images)
        return self._diagnostics(inputs, feats, cfg.ft_epochs)

    def _diagnostics(self, inputs: FitInputs, feats: np.ndarray, epochs: int) -> dict[str, float]:
        p = Scan._probs(self.model, feats)
        return {
            self.objective: scan_selection_loss(p, inputs.neighbors),
            "confident_frac_start": self.confident_start,
            "confident_frac_end": float((p.max(1).values > self.config.threshold).float().mean()),
            "epochs": epochs,
        }

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return Scan._probs(self.model, embeddings).argmax(1).numpy().astype(np.int64)
