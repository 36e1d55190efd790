"""Contract: every value of every choice field runs.

For every registered method and every ``Literal`` field of its config (discovered from the
types, so a new field or value is covered without editing this file), each allowed value is
built through ``from_dict`` with the method's smoke overrides and fitted and predicted on a
tiny input; a value outside the Literal is refused with a one-line UserError, whether the
config comes from ``from_dict`` or is built directly.

Finetune-only fields (``FINETUNE_ONLY``) are read nowhere in cached mode: every method hands
them unchanged to ``trainables.finetune.finetune_model`` (``ImageSteps`` ->
``train_transform``), the same code for all of them. So each of their values is fitted once, in
finetune mode on 8 tiny images, through one method (``FINETUNE_PROBE``), and skipped for the
others, whose finetune modes test_finetune.py fits with their default value.
"""

from __future__ import annotations

import functools
import io
import typing

import numpy as np
import pytest

from deepclust.config import CheckedChoices, choice_fields, from_dict
from deepclust.errors import UserError
from deepclust.gcd import make_split
from deepclust.knn import knn_self, l2_normalize
from trainables.methods import METHODS, FitInputs

N, C, D = 60, 3, 16
FINETUNE_ONLY = frozenset({"augment"})
FINETUNE_PROBE = "scan"

CASES = [
    (name, field, value)
    for name in METHODS.names()
    for field, allowed in choice_fields(METHODS.get(name).Config).items()
    if field not in FINETUNE_ONLY
    for value in allowed
]
BAD = [
    (name, field) for name in METHODS.names() for field in choice_fields(METHODS.get(name).Config)
]


@functools.cache
def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 unit-norm 16-d embeddings around 3 centres, their labels and 10-NN table."""
    rng = np.random.default_rng(0)
    y = np.arange(N) % C
    x = rng.normal(size=(C, D))[y] * 4.0 + rng.normal(size=(N, D))
    x = l2_normalize(x.astype(np.float32))
    return x, y, knn_self(x, 10)[0]


@functools.cache
def _parent_state(name: str) -> dict:
    """export_state() of a staged method's parent, fitted once with its smoke config."""
    parent_cls = METHODS.get(name)
    parent = parent_cls(from_dict(parent_cls.Config, parent_cls.smoke))
    parent.fit(_inputs(parent_cls))
    return parent.export_state()


def _inputs(method_cls, **extra) -> FitInputs:
    """The runner's inputs: GCD rows for GCD-only and ``gcd_labels`` methods (labelled rows
    and their labels only for the latter), the parent's state for staged methods."""
    x, y, nbr = _data()
    gcd = {}
    if method_cls.gcd_labels or "clustering" not in method_cls.settings:
        split = make_split(y, (0, 1))
        gcd = {"unlabelled_idx": split.unlabelled_idx}
        if method_cls.gcd_labels:
            gcd.update(labelled_idx=split.labelled_idx, labelled_y=y[split.labelled_idx])
    return FitInputs(
        embeddings=x,
        num_clusters=C,
        seed=0,
        neighbors=nbr if "neighbors" in method_cls.needs else None,
        labels=y if method_cls.uses_labels else None,
        init_state=_parent_state(method_cls.starts_from) if method_cls.starts_from else None,
        **gcd,
        **extra,
    )


def _check_predictions(pred: np.ndarray, n: int) -> None:
    assert pred.shape == (n,) and pred.dtype == np.int64
    assert pred.min() >= 0 and pred.max() < C


def test_cases_were_discovered():
    assert ("unic", "gcd_pos_labelled", "labels+mined") in CASES
    assert {"scan", "spice"} <= {name for name, _, _ in CASES}
    finetune_only = {f for name, f in BAD if f in FINETUNE_ONLY}
    assert finetune_only == FINETUNE_ONLY  # every exclusion names a real field
    assert FINETUNE_ONLY <= set(choice_fields(METHODS.get(FINETUNE_PROBE).Config))


def test_module_tuples_of_choices_match_the_literal_types():
    from trainables.losses.spice import BALANCE_RULES
    from trainables.methods.spice import BalanceRule

    assert typing.get_args(BalanceRule) == BALANCE_RULES


@pytest.mark.parametrize("name,field,value", CASES)
def test_every_choice_fits_and_predicts(name, field, value):
    method_cls = METHODS.get(name)
    cfg = from_dict(method_cls.Config, {**method_cls.smoke, field: value})
    assert getattr(cfg, field) == value
    method = method_cls(cfg)
    score = float(method.fit(_inputs(method_cls))[method_cls.objective])
    # +inf is UNIC's flag for a degenerate run (docs/methods.md, UNIC: model selection), which
    # a 20-step run may be
    assert np.isfinite(score) or score == np.inf
    _check_predictions(method.predict(_data()[0]), N)


@pytest.fixture(scope="module")
def tiny_images():
    """8 images of two classes and their embeddings by the offline default backbone."""
    import torch
    from PIL import Image

    from deepclust.backbones import DEFAULT_BACKBONE, build_backbone
    from deepclust.datasets import ImageSet
    from tests.conftest import make_images
    from trainables.finetune import BackboneWithHead, embed_images

    encoded, labels = make_images(8)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
    images = ImageSet("tiny", "train", labels, 2, ("warm", "cool"), "tiny-0", pixels=pixels)
    backbone, _ = build_backbone(DEFAULT_BACKBONE)
    backbone.reset_classifier(0)
    emb = embed_images(BackboneWithHead(backbone, torch.nn.Identity()), images)
    return images, l2_normalize(emb).astype(np.float32), DEFAULT_BACKBONE


@pytest.mark.parametrize(
    "field,value",
    [
        (field, value)
        for field, allowed in choice_fields(METHODS.get(FINETUNE_PROBE).Config).items()
        if field in FINETUNE_ONLY
        for value in allowed
    ],
)
def test_every_finetune_only_choice_fits_in_finetune_mode(field, value, tiny_images):
    images, emb, backbone = tiny_images
    method_cls = METHODS.get(FINETUNE_PROBE)
    overrides = {
        **method_cls.smoke,
        "finetune": True,
        "ft_epochs": 1,
        "ft_batch_size": 4,
        "num_neighbors": 3,
        field: value,
    }
    method = method_cls(from_dict(method_cls.Config, overrides))
    inputs = FitInputs(emb, 2, 0, neighbors=knn_self(emb, 3)[0], images=images, backbone=backbone)
    assert np.isfinite(method.fit(inputs)[method_cls.objective])
    pred = method.predict_images(images)
    assert pred.shape == (len(images),) and pred.dtype == np.int64
    assert pred.min() >= 0 and pred.max() < 2


@pytest.mark.parametrize("name", METHODS.names())
def test_every_config_checks_its_choices_when_built(name):
    """A config built directly (not through from_dict) checks its Literal fields too."""
    assert issubclass(METHODS.get(name).Config, CheckedChoices)


@pytest.mark.parametrize("name,field", BAD)
def test_a_value_outside_the_literal_is_refused(name, field):
    config_cls = METHODS.get(name).Config
    with pytest.raises(UserError, match=f"{config_cls.__name__}.{field} must be one of"):
        from_dict(config_cls, {field: "no-such-choice"})
    with pytest.raises(UserError, match=f"{field}='no-such-choice' is not a choice; valid: "):
        config_cls(**{field: "no-such-choice"})
    assert getattr(config_cls(), field) in choice_fields(config_cls)[field]  # default is valid
