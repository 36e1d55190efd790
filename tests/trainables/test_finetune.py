"""Finetune modes of every method that has one: the backbone's last blocks and the head train
on augmented images through the one loop, earlier blocks stay frozen, and predictions come
from the finetuned backbone."""

import dataclasses

import numpy as np
import pytest
import torch

from deepclust.backbones import DEFAULT_BACKBONE, build_backbone
from deepclust.config import from_dict
from deepclust.datasets import ImageSet
from deepclust.knn import knn_self, l2_normalize
from tests.conftest import make_images
from trainables.finetune import BackboneWithHead, FinetuneOptions, embed_images
from trainables.methods import METHODS, FitInputs

FINETUNABLE = [
    n
    for n in METHODS.names()
    if "finetune" in {f.name for f in dataclasses.fields(METHODS.get(n).Config)}
]


@pytest.fixture(scope="module")
def tiny_images():
    """24 images of two classes and their offline-backbone embeddings."""
    import io

    from PIL import Image

    encoded, labels = make_images(24)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
    images = ImageSet("tiny", "train", labels, 2, ("warm", "cool"), "tiny-0", pixels=pixels)
    backbone, _ = build_backbone(DEFAULT_BACKBONE)
    backbone.reset_classifier(0)
    emb = l2_normalize(embed_images(BackboneWithHead(backbone, torch.nn.Identity()), images))
    return images, emb.astype(np.float32), labels


def test_the_baselines_with_a_finetune_mode():
    # TEMI trains heads on a frozen backbone in its paper; k-means has no network
    assert set(FINETUNABLE) == {"iic", "scan", "scan_selflabel", "spice", "unic"}
    assert all(
        issubclass(METHODS.get(n).Config, FinetuneOptions) for n in FINETUNABLE if n != "unic"
    )


@pytest.mark.parametrize("name", FINETUNABLE)
def test_finetune_trains_the_last_block_and_predicts_images(name, tiny_images):
    images, emb, labels = tiny_images
    method_cls = METHODS.get(name)
    overrides = {**method_cls.smoke, "finetune": True, "ft_epochs": 1, "ft_batch_size": 8}
    if name == "spice":
        overrides["ft_batch_size"] = 2  # labelled images per step (x7 unlabelled)
    init_state = None
    if method_cls.starts_from:  # the parent stage in cached mode, as the pipeline runs it
        parent_cls = METHODS.get(method_cls.starts_from)
        parent = parent_cls(from_dict(parent_cls.Config, parent_cls.smoke))
        parent.fit(FitInputs(emb, 2, 0, neighbors=knn_self(emb, 10)[0]))
        init_state = parent.export_state()
    inputs = FitInputs(
        embeddings=emb,
        num_clusters=2,
        seed=0,
        neighbors=knn_self(emb, 10)[0],
        images=images,
        backbone=DEFAULT_BACKBONE,
        init_state=init_state,
    )
    method = method_cls(from_dict(method_cls.Config, overrides))
    diagnostics = method.fit(inputs)
    assert np.isfinite(diagnostics[method_cls.objective])
    if name == "unic":  # scored on what the head reads: the finetuned backbone's features
        tuned_feats = embed_images(method.model, images)
        score = diagnostics[method_cls.objective]
        assert score == pytest.approx(method.selection_score(inputs, tuned_feats))
        assert score != pytest.approx(method.selection_score(inputs))  # not the cached ones

    pretrained, _ = build_backbone(DEFAULT_BACKBONE)
    tuned = method.finetuned.backbone if method.finetuned is not None else method.model.backbone
    before = dict(pretrained.named_parameters())
    changed = {n: not torch.equal(p, before[n]) for n, p in tuned.named_parameters()}
    last = f"blocks.{len(tuned.blocks) - 1}."
    assert any(v for n, v in changed.items() if n.startswith(last))  # the unfrozen block moved
    assert not any(v for n, v in changed.items() if n.startswith("blocks.0."))  # frozen ones not

    pred = method.predict_images(images)
    assert pred.shape == (len(images),) and pred.dtype == np.int64
    assert pred.min() >= 0 and pred.max() < 2


def test_augmented_batches_do_not_depend_on_the_loader_processes(tiny_images):
    """Forked loader processes augment the next step while this one trains: every image draws
    from its own seed, so the batches equal the in-process ones, and the caller's torch RNG
    stream (the model's dropout) is untouched by the augmentations."""
    from trainables.finetune import ImageSteps

    images = tiny_images[0]
    backbone, _ = build_backbone(DEFAULT_BACKBONE)

    def sample(b, gen):
        rows = torch.randint(0, len(images), (b,), generator=gen)
        return {"weak": rows, "strong": rows, "mask": rows % 2}

    def batches(workers: int) -> list[dict]:
        steps = ImageSteps(
            images,
            backbone.pretrained_cfg,
            sample,
            {"weak": "none", "strong": "simclr"},
            batch=4,
            seed=3,
            rank=0,
            step_fn=None,
            loader_workers=workers,
        )
        torch.manual_seed(0)
        out = list(steps.batches(epoch=1, steps=3))
        out.append({"after": torch.rand(2)})  # the global stream after the epoch
        return out

    in_process, forked = batches(0), batches(2)
    assert len(in_process) == len(forked) == 4
    for a, b in zip(in_process, forked, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    torch.manual_seed(0)
    assert torch.equal(in_process[-1]["after"], torch.rand(2))
    first = in_process[0]
    assert first["weak"].shape == (4, 3, 224, 224)
    assert not torch.equal(first["weak"], first["strong"])  # the two views differ
