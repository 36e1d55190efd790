"""Backbone finetuning shared by methods: a trainable backbone + head module, partial
unfreezing, training-time augmentations computed from the weights' own preprocessing, the
augmented image batches and the finetune run itself (on the one loop)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from deepclust.config import CheckedChoices, Count, Rate
from deepclust.errors import UserError
from deepclust.preprocess import Preprocess, open_image
from trainables.loop import LoopConfig, LoopHooks, epoch_generator, epoch_seed, fit

Augment = Literal["simgcd", "simclr", "none"]  # train_transform's kinds (config fields use it)
AUGMENTS: tuple[str, ...] = get_args(Augment)


class BackboneWithHead(nn.Module):
    """images (B, 3, S, S) -> backbone features -> head logits (B, C)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def unfreeze_last_blocks(backbone: nn.Module, n_blocks: int) -> list[str]:
    """Freeze everything, then unfreeze the last ``n_blocks`` of ``backbone.blocks`` and every
    parameter registered after them (final norm / conv head). Returns the trainable names.

    timm registers parameters in forward order (stem, blocks, norm/head), so "from the first
    parameter of blocks[-n] onwards" is exactly "the last n blocks and what follows them".
    """
    if not hasattr(backbone, "blocks"):
        raise ValueError(f"{type(backbone).__name__} has no .blocks to unfreeze")
    names = [n for n, _ in backbone.named_parameters()]
    first = f"blocks.{len(backbone.blocks) - n_blocks}."
    start = next(i for i, n in enumerate(names) if n.startswith(first))
    trainable = set(names[start:])
    for name, p in backbone.named_parameters():
        p.requires_grad_(name in trainable)
    return names[start:]


def train_transform(pp: Preprocess, kind: str = "simgcd"):
    """PIL -> normalised (3, S, S) tensor with the training augmentation ``kind``.

    ``simgcd``: Resize(floor(S / crop_pct)) -> RandomCrop(S) -> HorizontalFlip (SimGCD; its
    ColorJitter() with default arguments is a no-op and is left out). ``simclr``:
    RandomResizedCrop(S, 0.2-1) -> flip -> ColorJitter(0.4, 0.4, 0.4, 0.1) p0.8 -> grey p0.2.
    ``none``: the eval geometry.
    """
    # imported here: torchvision costs a second at import, and every Ray worker that trains a
    # head on cached embeddings imports this module (for the method configs) without it
    from torchvision import transforms as T

    interp = T.InterpolationMode(pp.interpolation)
    size = pp.input_size
    norm = [T.ToTensor(), T.Normalize(pp.mean, pp.std)]
    if kind == "simgcd":
        ops = [T.Resize(pp.resize_size, interp), T.RandomCrop(size), T.RandomHorizontalFlip()]
    elif kind == "simclr":
        ops = [
            T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=interp),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    elif kind == "none":
        ops = [T.Resize(pp.resize_size, interp), T.CenterCrop(size)]
    else:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {kind!r}")
    return T.Compose(ops + norm)


def load_rgb(source) -> Image.Image:
    """One image of an ImageSet source (pixels / bytes / path) as RGB PIL."""
    if isinstance(source, np.ndarray) and source.dtype != np.uint8:
        source = source.astype(np.uint8)
    return open_image(source).convert("RGB")


def item_seed(epoch_stream: int, step: int, view: int, position: int) -> int:
    """The augmentation seed of one image of one step: each image draws from its own stream,
    so a batch is the same however many processes augment it."""
    return int(np.random.SeedSequence([epoch_stream, step, view, position]).generate_state(1)[0])


def augment_item(images, transforms: dict, item: tuple[int, str, int]) -> Tensor:
    """One (image id, augmentation kind, seed) -> (3, S, S); the caller's torch RNG stream is
    left as it was (the model's own randomness must not depend on the augmentations)."""
    idx, kind, seed = item
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transforms[kind](load_rgb(images.source_item(idx)))


_WORKER: dict = {}  # a loader process's images and transforms (set once, at fork)


def _init_worker(images, transforms) -> None:
    torch.set_num_threads(1)
    _WORKER.update(images=images, transforms=transforms)


def _augment_chunk(items: list[tuple[int, str, int]]) -> list[Tensor]:
    return [augment_item(_WORKER["images"], _WORKER["transforms"], it) for it in items]


def build_trainable_backbone(name: str, weights_file: str | None, n_blocks: int) -> nn.Module:
    from deepclust.backbones import build_backbone

    backbone, _ = build_backbone(name, weights_file)
    backbone.reset_classifier(0)  # the ImageNet classifier is unused: DDP needs every grad used
    unfreeze_last_blocks(backbone, n_blocks)
    return backbone


def _keep_backbone_eval(model: nn.Module) -> None:
    # Frozen layers keep their pretrained BatchNorm statistics and no dropout: the backbone
    # runs in eval mode while gradients still reach the unfrozen blocks.
    if isinstance(model, BackboneWithHead):
        model.backbone.eval()


@dataclass(frozen=True)
class FinetuneOptions(CheckedChoices):
    """Backbone-finetuning fields of the baselines' configs (inherited by each config).

    Defaults follow SCAN's and IIC's CIFAR runs (Adam 1e-4, batch 128, 50 epochs over the fit
    split); the head starts from the method's cached-mode solution.
    """

    finetune: bool = False
    unfreeze_last_blocks: int = 1
    ft_lr: Rate = 1e-4
    ft_weight_decay: float = 1e-4
    ft_batch_size: Count = 128  # anchors per step over all workers
    ft_epochs: Count = 50
    augment: Augment = "simclr"  # the training view (SCAN's ImageNet configs: SimCLR's)


class ImageSteps:
    """The loop's batches in finetune modes.

    ``sample(batch, gen)`` draws a dict of (n,) image-id tensors; every key named in ``views``
    is replaced by those images augmented with that view's transform (``AUGMENTS``), each image
    independently; other keys (masks, pseudo-labels) pass through.
    """

    def __init__(
        self,
        images,
        pretrained_cfg,
        sample: Callable[[int, torch.Generator], dict[str, Tensor]],
        views: dict[str, str],
        batch: int,
        seed: int,
        rank: int,
        step_fn: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict]],
        loader_workers: int = 0,
    ) -> None:
        pp = Preprocess.from_timm_cfg(pretrained_cfg)
        self.images, self.sample, self.views, self.batch = images, sample, views, batch
        self.transforms = {kind: train_transform(pp, kind) for kind in set(views.values())}
        self.seed, self.rank, self.step_fn = seed, rank, step_fn
        self.loader_workers = loader_workers

    def _items(self, ids: dict[str, Tensor], stream: int, step: int) -> list[tuple[int, str, int]]:
        """Every image of one step's views as (image id, augmentation kind, seed)."""
        return [
            (int(i), self.views[key], item_seed(stream, step, view, pos))
            for view, key in enumerate(sorted(k for k in ids if k in self.views))
            for pos, i in enumerate(ids[key])
        ]

    def batches(self, epoch: int, steps: int):
        """``steps`` batches of one epoch. With ``loader_workers`` the next step's images are
        decoded and augmented by forked processes while this step trains."""
        gen = epoch_generator(self.seed, self.rank, epoch)
        stream = epoch_seed(self.seed, self.rank, epoch)
        pool = None
        if self.loader_workers > 0 and steps:
            ctx = torch.multiprocessing.get_context("fork")  # the images are inherited, not sent
            pool = ctx.Pool(self.loader_workers, _init_worker, (self.images, self.transforms))

        def draw(step: int):
            ids = self.sample(self.batch, gen)  # in step order: the same stream as unprefetched
            items = self._items(ids, stream, step)
            if pool is None:
                return ids, items, None
            size = max(1, math.ceil(len(items) / self.loader_workers))
            chunks = [items[i : i + size] for i in range(0, len(items), size)]
            return ids, items, pool.map_async(_augment_chunk, chunks)

        try:
            pending = draw(0) if steps else None
            for step in range(steps):
                ids, items, handle = pending
                pending = draw(step + 1) if step + 1 < steps else None
                if handle is None:
                    tensors = [augment_item(self.images, self.transforms, it) for it in items]
                else:
                    tensors = [t for chunk in handle.get() for t in chunk]
                yield self._assemble(ids, tensors)
        finally:
            if pool is not None:
                pool.terminate()

    def _assemble(self, ids: dict[str, Tensor], tensors: list[Tensor]) -> dict[str, Tensor]:
        out, start = {}, 0
        for key in sorted(ids):
            if key in self.views:
                n = len(ids[key])
                out[key] = torch.stack(tensors[start : start + n])
                start += n
            else:
                out[key] = ids[key]
        return {key: out[key] for key in ids}

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]):
        inner = model.module if hasattr(model, "module") else model
        _keep_backbone_eval(inner)
        return self.step_fn(model, batch)


def finetune_model(
    head: nn.Module,
    inputs,
    opts,
    hooks: LoopHooks,
    sample: Callable[[int, torch.Generator], dict[str, Tensor]],
    views: dict[str, str],
    step_fn: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict]],
    optimizer: str = "adam",
    schedule: str = "constant",
    steps_per_epoch: int | None = None,
) -> BackboneWithHead:
    """Train the backbone's last ``opts.unfreeze_last_blocks`` blocks + ``head`` on augmented
    images (``ImageSteps``) for ``opts.ft_epochs`` epochs of the fit split; every epoch is
    reported and checkpointed (resume through ``hooks``). Returns the model on CPU, eval mode.

    ``inputs`` is the method's FitInputs (images, backbone name and weights); ``opts`` any
    config with the ``FinetuneOptions`` fields; ``steps_per_epoch`` defaults to one pass of
    the fit split at ``opts.ft_batch_size`` images per step.
    """
    if inputs.images is None or inputs.backbone is None:
        raise UserError("finetune mode needs the fit split's images and backbone name")
    if opts.augment not in AUGMENTS:
        raise UserError(f"augment must be one of {', '.join(AUGMENTS)}, got '{opts.augment}'")
    backbone = build_trainable_backbone(
        inputs.backbone, inputs.backbone_weights, opts.unfreeze_last_blocks
    )
    model = BackboneWithHead(backbone, head)
    n = len(inputs.embeddings)
    batch = max(1, min(opts.ft_batch_size, n) // hooks.world_size)
    steps = ImageSteps(
        inputs.images,
        backbone.pretrained_cfg,
        sample,
        views,
        batch,
        inputs.seed,
        hooks.world_rank,
        step_fn,
        hooks.loader_workers,
    )
    cfg = LoopConfig(
        epochs=opts.ft_epochs,
        steps_per_epoch=steps_per_epoch or math.ceil(n / (batch * hooks.world_size)),
        lr=opts.ft_lr,
        weight_decay=opts.ft_weight_decay,
        optimizer=optimizer,
        schedule=schedule,
    )
    return fit(model, steps, cfg, hooks).cpu().eval()


@torch.no_grad()
def embed_images(model: BackboneWithHead, images, batch_size: int = 64) -> np.ndarray:
    """(N, D) backbone features of an ImageSet with the eval geometry."""
    from deepclust.preprocess import decode_batch, normalize_images

    pp = Preprocess.from_timm_cfg(model.backbone.pretrained_cfg)
    model.eval()
    out = []
    for batch in images.batches(batch_size):
        decoded = decode_batch(batch, pp)
        x = normalize_images(torch.from_numpy(decoded["image"]), pp)
        out.append(model.features(x).float().numpy())
    return np.concatenate(out)
