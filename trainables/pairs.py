"""Shared pieces of the neighbour-pair baselines on cached embeddings (SCAN, TEMI, IIC).

Each of these methods trains on (anchor, one mined neighbour) pairs of frozen embeddings; the
sampler, the batch stream, the scale rule and SCAN's label-free selection loss live here so
the method files hold only what is specific to each method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from deepclust.errors import UserError
from trainables.loop import LoopHooks, epoch_generator


def check_k(name: str, k: int, kmax: int) -> None:
    if not 1 <= k <= kmax:
        raise UserError(
            f"{name}={k} but {kmax} neighbours were mined; use 1 <= {name} <= {kmax} "
            "or mine more (--kmax)"
        )


def cached_schedule(
    n: int, batch: int | None, epochs: int | None, batch_rule: tuple[int, int, int], min_steps: int
) -> tuple[int, int, int]:
    """(batch, epochs, steps_per_epoch) from N: batch = clamp(N // div, lo, hi) unless given;
    ``epochs`` (default 100) is raised until the run has at least ``min_steps`` steps, so small
    sets still converge (rules in N, never dataset constants)."""
    div, lo, hi = batch_rule
    batch = min(n, batch or int(np.clip(n // div, lo, hi)))
    steps = max(1, math.ceil(n / batch))
    epochs = epochs or max(100, math.ceil(min_steps / steps))
    return batch, epochs, steps


class NeighborPairs:
    """An anchor and one neighbour drawn uniformly from its top-k (SCAN: the k + 1 entries
    that include the anchor itself when ``include_self``)."""

    def __init__(self, neighbors: np.ndarray, k: int, include_self: bool) -> None:
        table = torch.from_numpy(np.ascontiguousarray(neighbors[:, :k]))
        if include_self:
            table = torch.cat([torch.arange(len(table))[:, None], table], 1)
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def sample(self, batch: int, gen: torch.Generator, repeats: int = 1) -> tuple[Tensor, Tensor]:
        """(batch * repeats,) anchors (each repeated ``repeats`` times) and their partners."""
        anchors = torch.randint(0, len(self.table), (batch,), generator=gen)
        anchors = anchors.repeat_interleave(repeats)
        slot = torch.randint(0, self.table.shape[1], (len(anchors),), generator=gen)
        return anchors, self.table[anchors, slot]


class PairSteps:
    """The loop's batches for pair methods: {"anchor", "partner"} embedding rows."""

    def __init__(
        self,
        features: Tensor,
        pairs: NeighborPairs,
        batch: int,
        seed: int,
        rank: int,
        step: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict]],
        repeats: int = 1,
    ) -> None:
        self.features, self.pairs, self.batch = features, pairs, batch
        self.seed, self.rank, self.step, self.repeats = seed, rank, step, repeats

    @classmethod
    def sharded(
        cls,
        features: Tensor,
        pairs: NeighborPairs,
        batch: int,
        seed: int,
        hooks: LoopHooks,
        step: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict]],
        repeats: int = 1,
    ) -> PairSteps:
        """Each of the run's DDP workers (``hooks``) draws its share of
        ``batch`` anchors from its own stream."""
        share = max(1, batch // hooks.world_size)
        return cls(features, pairs, share, seed, hooks.world_rank, step, repeats)

    def batches(self, epoch: int, steps: int) -> Iterator[dict[str, Tensor]]:
        gen = epoch_generator(self.seed, self.rank, epoch)
        for _ in range(steps):
            a, p = self.pairs.sample(self.batch, gen, self.repeats)
            yield {"anchor": self.features[a], "partner": self.features[p]}

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        return self.step(model, batch)


def dropout(x: Tensor, rate: float, gen: torch.Generator) -> Tensor:
    """Inverted dropout with an explicit generator: the "strong view" of an embedding where
    cached mode has no image augmentation (self-labelling, SPICE)."""
    if rate == 0:
        return x
    return x * (torch.rand(x.shape, generator=gen) >= rate).to(x.dtype) / (1 - rate)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def scan_selection_loss(p: Tensor, neighbors: np.ndarray, k: int = 5) -> float:
    """SCAN's label-free selection loss on the fit split: mean -log<p_i, p_j> over each row's
    top-k mined neighbours, minus 1 x the entropy of the mean prediction (weight 1, not lambda,
    as SCAN's evaluation). (N, C) probabilities -> float; lower is better."""
    top = torch.from_numpy(np.ascontiguousarray(neighbors[:, :k]))
    consistency = -torch.log((p[:, None, :] * p[top]).sum(-1) + 1e-8).mean()
    pbar = p.mean(0)
    entropy = -(pbar * pbar.clamp(min=1e-8).log()).sum()
    return float(consistency - entropy)
