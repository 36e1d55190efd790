"""The method contract shared by every clustering method.

A method is one file: a frozen config dataclass, what inputs it needs, and fit/predict. The
runner (``orchestrator/pipeline.py``) hands it a :class:`FitInputs` with ground-truth labels
removed unless the method declares ``uses_labels`` (leak guard: an unsupervised method cannot
see labels even by accident), then scores ``predict`` on the evaluation split.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from trainables import loop

# Neighbours mined per image (fewer on sets of 50 images or less); methods slice [:, :k], and
# search spaces stop their neighbour counts here.
# deviation: UNIC's paper searches k up to 100; 50 covers SCAN's 20 and TEMI's 50, and mining
# costs grow with it.
DEFAULT_KMAX = 50

# A define-by-run search space: fn(trial, setting, kmax, num_clusters) -> config overrides,
# every suggested name a field of the method's config (``trial`` is an Optuna trial, duck-typed
# so that method files need no Optuna).
SearchSpace = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class FitInputs:
    """Everything a method may read when fitting.

    Attributes:
        embeddings: (N, D) float32 unit-norm features of the fit split.
        num_clusters: number of clusters to find (the benchmark's class count).
        seed: seed for every random choice the method makes.
        neighbors: (N, kmax) int64 mined neighbour indices (self excluded), if needed.
        labels: (N,) int64 ground truth; None unless the method ``uses_labels``.
        images: the fit split's images (same order as embeddings), only for finetuning.
        init_state: the ``export_state()`` of the run this method ``starts_from`` (a staged
            method such as SCAN's self-labelling), else None.
        labelled_idx, labelled_y: GCD only, and only for methods with ``gcd_labels``: the
            labelled rows and their (Old-class) labels; nothing about any other row.
        unlabelled_idx: GCD only: the rows that will be scored (visible to every method,
            docs/gcd.md, GCD: what methods receive; k-means fits on them as in the GCD
            scripts).
    """

    embeddings: np.ndarray
    num_clusters: int
    seed: int
    neighbors: np.ndarray | None = None
    labels: np.ndarray | None = None
    images: Any = None  # deepclust.datasets.ImageSet of the fit split, for finetuning modes
    backbone: str | None = None  # backbone name (and weights file) for finetuning modes
    backbone_weights: str | None = None
    init_state: dict[str, Any] | None = None
    labelled_idx: np.ndarray | None = None
    labelled_y: np.ndarray | None = None
    unlabelled_idx: np.ndarray | None = None


class ClusteringMethod(abc.ABC):
    """Base class of every registered method."""

    Config: ClassVar[type]
    needs: ClassVar[frozenset[str]] = frozenset({"embeddings"})  # subset of FitInputs fields
    uses_labels: ClassVar[bool] = False
    trainable: ClassVar[bool] = False  # False: fit offline in the driver, no training loop
    # Label-free criterion the method selects with internally (its own heads, restarts).
    objective: ClassVar[str]
    # What a hyperparameter search ranks this method's trials by: (name, "min" | "max"). It
    # must be label-free and comparable across configurations (a loss whose value depends on
    # the searched weights is not); trainables/objective.py computes it. The default reads
    # only predictions and the mined kNN table (deepclust.selection.neighbor_agreement).
    search_objective: ClassVar[tuple[str, str]] = ("neighbor_agreement", "max")
    # True when the loop's reports carry ``search_objective`` at every report (hooks with
    # ``want_objective``), so a scheduler (ASHA) may stop a trial early on it.
    reports_objective: ClassVar[bool] = False
    # A staged method starts from another registered method's run on the same inputs and
    # seed (the runner trains or reuses that run and passes its export_state() in init_state).
    starts_from: ClassVar[str | None] = None
    # Settings the method runs in. Unsupervised methods also run in GCD (labels unused, scored
    # on the unlabelled pool); ``gcd_labels`` methods read the labelled subset there.
    settings: ClassVar[frozenset[str]] = frozenset({"clustering", "gcd"})
    gcd_labels: ClassVar[bool] = False
    # Every method declares these three in its own class (a contract test checks it):
    # overrides for a laptop-size smoke run (contract tests, --smoke-test), {} = defaults;
    smoke: ClassVar[dict[str, Any]]
    # overrides at laptop fidelity (CPU-only clusters; search_spaces/budgets.py), {} = none;
    laptop: ClassVar[dict[str, Any]]
    # its hyperparameter search space, or None where nothing is worth searching.
    search_space: ClassVar[SearchSpace | None]

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}")
        self.config = config
        self.finetuned: Any = None  # backbone + head after a finetune-mode fit

    @abc.abstractmethod
    def fit(self, inputs: FitInputs, hooks: Any = None) -> dict[str, float]:
        """Fit on the fit split; return label-free diagnostics (including ``objective``).

        ``hooks`` (a ``trainables.loop.LoopHooks``) carries distribution, reporting and resume
        for trainable methods; offline methods ignore it.
        """

    def export_state(self) -> dict[str, Any] | None:
        """What a later stage needs to start from this fitted method (None: nothing)."""
        return None

    @abc.abstractmethod
    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(M, D) features -> (M,) int64 cluster ids in [0, num_clusters)."""

    def predict_images(self, images: Any, batch_size: int = 64) -> np.ndarray:
        """(M,) cluster ids of an ImageSet through the finetuned backbone (eval geometry)."""
        if self.finetuned is None:
            raise RuntimeError(f"{type(self).__name__} was not fitted in finetune mode")
        from trainables.finetune import embed_images

        return self.predict(embed_images(self.finetuned, images, batch_size))


@dataclass
class CachedPlan:
    """What a head method trains on cached embeddings with the one loop: the model, its
    batches (``trainables.loop.TrainSteps``), the loop's settings and hooks. ``train=False``:
    nothing trains on cached embeddings (a finetune run without a warm start); the untrained
    model goes to ``select`` as it is."""

    model: nn.Module
    steps: Any
    config: loop.LoopConfig
    hooks: loop.LoopHooks
    train: bool = True


class HeadMethod(ClusteringMethod):
    """A method that trains cluster heads with the one training loop (SCAN, self-labelling,
    TEMI, IIC, SPICE, UNIC). It owns the common ``fit``:

    1. ``check``: one-line errors for settings the inputs cannot support (k > kmax, ...);
    2. the run's seed for every torch draw;
    3. ``plan``: the model, batches and loop settings on cached embeddings (its hooks: the
       run's, or, when the cached stage only warm-starts a finetune run, local ones);
    4. the loop (``trainables.loop.fit``), then the model on the CPU in eval mode;
    5. ``select``: keep the head with the best label-free score (``self.model``) and return
       the diagnostics, the method's ``objective`` among them;
    6. ``refine``: a second stage on the selected head: by default, in finetune mode, the
       backbone's last blocks and the head on augmented images (``finetune``).
    """

    trainable = True

    @property
    def finetunes(self) -> bool:
        return bool(getattr(self.config, "finetune", False))

    def fit(self, inputs: FitInputs, hooks: loop.LoopHooks | None = None) -> dict[str, float]:
        hooks = hooks or loop.LoopHooks()
        self.check(inputs)
        torch.manual_seed(inputs.seed)
        plan = self.plan(inputs, loop.warm_start_hooks(hooks, self.finetunes))
        model = plan.model
        if plan.train:
            model = loop.fit(plan.model, plan.steps, plan.config, plan.hooks).cpu().eval()
        out = self.select(model, inputs)
        out.update(self.refine(inputs, hooks))
        return out

    def check(self, inputs: FitInputs) -> None:
        """Raise a UserError for settings these inputs cannot support (default: none)."""

    @abc.abstractmethod
    def plan(self, inputs: FitInputs, hooks: loop.LoopHooks) -> CachedPlan:
        """The cached-embedding stage; ``hooks`` are the ones it should train with."""

    @abc.abstractmethod
    def select(self, trained: nn.Module, inputs: FitInputs) -> dict[str, float]:
        """Keep the best head of ``trained`` as ``self.model``; return the diagnostics."""

    def refine(self, inputs: FitInputs, hooks: loop.LoopHooks) -> dict[str, float]:
        """A stage after selection (default: ``finetune`` in finetune mode, else nothing);
        returns diagnostics that replace ``select``'s."""
        return self.finetune(inputs, hooks) if self.finetunes else {}

    def finetune(self, inputs: FitInputs, hooks: loop.LoopHooks) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} has no finetune mode")
