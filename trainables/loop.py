"""The one training loop. Methods supply the model, batches and the step; the loop owns the
optimiser, schedule, AMP, clipping, NaN guard, epoch bookkeeping, checkpoint state and
reporting. Distribution is injected: ``prepare_model`` (identity, or Ray Train's DDP wrapper)
and ``report`` (a no-op, or ``ray.train.report``), so this file never imports Ray.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from deepclust.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    steps_per_epoch: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw (no decay on biases/1-D params) | sgd (momentum 0.9)
    schedule: str = "constant"  # constant | cosine (to lr * min_lr_ratio)
    min_lr_ratio: float = 1e-3
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    grad_clip: float = 0.0  # 0 disables
    amp: bool = True  # bf16 autocast on CUDA
    # bf16 autocast on the CPU as well, where it has native bf16 units (``cpu_has_bf16``; fp32
    # elsewhere): laptop fidelity's MLP heads (search_spaces/budgets.py)
    cpu_amp: bool = False
    report_every: int = 1  # epochs between reports/checkpoints (and always the last epoch)


class TrainSteps(Protocol):
    """What a trainable method gives the loop.

    Optionally also ``after_step(model)``, called after every optimiser step (EMA teachers).
    """

    def batches(self, epoch: int, steps: int) -> Iterator[dict[str, Tensor]]: ...

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]: ...


@dataclass
class LoopHooks:
    """Injected by the caller: distribution, reporting and resume (all optional)."""

    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m
    # report(metrics, state): state is the checkpoint payload for this epoch
    report: Callable[[dict[str, Any], dict[str, Any]], None] = lambda metrics, state: None
    resume_state: dict[str, Any] | None = None
    # CUDA when this process sees a GPU, else the CPU. Ray narrows CUDA_VISIBLE_DEVICES to the
    # GPUs it gave a task or trial; a process Ray gave none (or the driver) sees the machine's.
    # Runs that must stay off a GPU pass device explicitly.
    device: torch.device = field(default_factory=lambda: default_device())
    world_rank: int = 0
    world_size: int = 1
    # processes that decode and augment finetune images beside this one (0: in this process);
    # the batches are the same for any count
    loader_workers: int = 0
    # a search asks for the method's search objective at every report (methods with
    # ``reports_objective`` then set ``evaluate``); evaluate(model) -> metrics to merge
    want_objective: bool = False
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None


def warm_start_hooks(hooks: LoopHooks, finetune: bool) -> LoopHooks:
    """The hooks of a run's cached-embedding stage: the run's own, or, when that stage only
    warm-starts a finetune run, local ones (no DDP, no reports), so every worker trains the
    same warm start."""
    return LoopHooks(device=hooks.device) if finetune else hooks


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast
    trains an MLP head 1.3-1.6x faster (bench/RESULTS.md); elsewhere it would be emulated,
    slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one worker's batch stream for one epoch: a resumed run replays exactly the
    batches the interrupted one would have drawn, and DDP ranks draw different ones."""
    return seed * 1_000_003 + rank * 7919 + epoch


def epoch_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, rank, epoch))


def _optimizer(params, cfg: LoopConfig) -> torch.optim.Optimizer:
    # foreach: one multi-tensor update per step instead of one per parameter (PyTorch enables
    # it by default on CUDA only); on CPU heads of a few small tensors it halves the step time
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adamw":
        params = list(params)
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, foreach=True
        )
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}")


def _lr_at(cfg: LoopConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * step / max(1, total)))


def fit(model: nn.Module, steps: TrainSteps, cfg: LoopConfig, hooks: LoopHooks) -> nn.Module:
    """Train ``model`` for ``cfg.epochs``; returns the (unwrapped) trained model.

    Every epoch ends with ``hooks.report(metrics, state)`` on every rank (Ray Train requires
    all ranks to report); ``state`` holds model/optimiser/epoch for resuming, and
    ``hooks.resume_state`` restarts from it.
    """
    model = model.to(hooks.device)
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    start_epoch = 0
    if hooks.resume_state is not None:
        model.load_state_dict(hooks.resume_state["model"])
        optimizer.load_state_dict(hooks.resume_state["optimizer"])
        start_epoch = int(hooks.resume_state["epoch"])
        log.info("resumed from the end of epoch %d", start_epoch)
    wrapped = hooks.prepare_model(model)
    total = cfg.epochs * cfg.steps_per_epoch
    after_step = getattr(steps, "after_step", None)
    autocast = cfg.amp and (
        hooks.device.type == "cuda"
        or (cfg.cpu_amp and hooks.device.type == "cpu" and cpu_has_bf16())
    )
    for epoch in range(start_epoch, cfg.epochs):
        wrapped.train()
        sums: dict[str, float] = {}
        for i, batch in enumerate(steps.batches(epoch, cfg.steps_per_epoch)):
            step = epoch * cfg.steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, step, total)
            batch = {k: v.to(hooks.device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(hooks.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, logs = steps.training_step(wrapped, batch)
            if not torch.isfinite(loss):
                raise UserError(
                    f"the loss became {float(loss)} at epoch {epoch + 1}, step {i + 1}; checkpoints "
                    f"up to epoch {epoch} are kept; lower the learning rate or check the inputs"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step(model)
            for k, v in {"loss/train": float(loss.detach()), **logs}.items():
                sums[k] = sums.get(k, 0.0) + v
        if (epoch + 1) % cfg.report_every and epoch + 1 != cfg.epochs:
            continue  # every rank skips the same epochs: reports stay in lockstep
        metrics = {k: v / cfg.steps_per_epoch for k, v in sums.items()}
        metrics.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"])
        if hooks.evaluate is not None:
            metrics.update(hooks.evaluate(model))
        # a snapshot, not live references: consumers may keep it while training goes on
        state = copy.deepcopy(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        )
        hooks.report(metrics, state)
    return model


def cached_config(
    epochs: int, steps_per_epoch: int, lr: float, weight_decay: float = 0.0
) -> LoopConfig:
    """The cached-embedding defaults: Adam, constant lr, ~10 reports/checkpoints (cached
    epochs are short)."""
    return LoopConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        weight_decay=weight_decay,
        report_every=max(1, epochs // 10),
    )
