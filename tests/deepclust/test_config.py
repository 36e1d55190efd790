from dataclasses import FrozenInstanceError, dataclass
from typing import Literal

import pytest

from deepclust.config import (
    CheckedChoices,
    check_choices,
    choice_fields,
    choices,
    from_dict,
    parse_override,
    to_dict,
)
from deepclust.errors import UserError
from deepclust.registry import Registry


@dataclass(frozen=True)
class Cfg:
    num_neighbors: int = 20
    temperature: float = 0.1
    mode: Literal["a", "b"] = "a"
    widths: tuple[int, ...] = (1, 2)
    note: str | None = None


def test_round_trip_and_coercions():
    cfg = from_dict(Cfg, {"num_neighbors": 5, "temperature": 1, "widths": [3]})
    assert cfg == Cfg(num_neighbors=5, temperature=1.0, widths=(3,))
    assert isinstance(cfg.temperature, float)
    assert from_dict(Cfg, to_dict(cfg)) == cfg


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'num_neighbors'"):
        from_dict(Cfg, {"num_neighbours": 5})


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_neighbors", 2.5),
        ("num_neighbors", True),
        ("mode", "c"),
        ("temperature", "hot"),
        ("widths", [1, "x"]),
    ],
)
def test_wrong_types_are_rejected(key, value):
    with pytest.raises(UserError, match=key):
        from_dict(Cfg, {key: value})


@dataclass(frozen=True)
class Checked(CheckedChoices):
    mode: Literal["a", "b+c"] = "a"
    other: Literal["x", "y", "z"] = "z"
    name: str = "free"  # a plain str is not a choice field


def test_choice_fields_are_read_from_the_literal_types():
    assert choice_fields(Checked) == {"mode": ("a", "b+c"), "other": ("x", "y", "z")}
    assert choices(Checked, "other") == ("x", "y", "z")
    with pytest.raises(ValueError, match="Checked.name is not a Literal choice field"):
        choices(Checked, "name")


def test_a_value_outside_the_literal_is_refused_however_the_config_is_built():
    assert Checked(mode="b+c").mode == "b+c"
    message = "Checked.other='w' is not a choice; valid: x, y, z"
    with pytest.raises(UserError, match=message):
        Checked(other="w")  # built directly: __post_init__
    with pytest.raises(UserError, match="Checked.other must be one of 'x', 'y', 'z', got 'w'"):
        from_dict(Checked, {"other": "w"})
    with pytest.raises(UserError, match="Cfg.mode='c' is not a choice"):
        check_choices(Cfg(mode="c"))  # type: ignore[arg-type]


def test_configs_are_frozen():
    with pytest.raises(FrozenInstanceError):
        Cfg().temperature = 3.0  # type: ignore[misc]


def test_registry_is_loud():
    reg: Registry[int] = Registry("widget")
    reg.add("one", 1)
    with pytest.raises(ValueError, match="duplicate widget 'one'"):
        reg.add("one", 2)
    with pytest.raises(
        UserError, match="unknown widget 'onr' \\(did you mean 'one'\\?\\); valid: one"
    ):
        reg.get("onr")


def test_parse_override_reads_json_else_keeps_the_string():
    assert parse_override("pos_k=30") == ("pos_k", 30)
    assert parse_override("scan.head=mlp") == ("scan.head", "mlp")
    assert parse_override("finetune=true") == ("finetune", True)
    assert parse_override("note=a=b") == ("note", "a=b")
    for bad in ("pos_k", "=3"):
        with pytest.raises(UserError, match="--set expects KEY=VALUE"):
            parse_override(bad)


def test_every_numeric_field_of_every_method_is_range_checked():
    """Each int / float field of each method's config refuses NaN, infinity and -1 (counts
    also 0, rates 0, fractions 1.5) with a one-line error naming the field and its range."""
    import math

    from deepclust.config import Range, from_dict, range_fields
    from trainables.methods import METHODS

    checked = 0
    for name in METHODS.names():
        cls = METHODS.get(name).Config
        for field, rng in range_fields(cls).items():
            bad = [math.nan, math.inf, -1]
            bad += [0] if rng == Range(1.0) or rng.lo_open else []
            bad += [1.5] if rng.hi == 1.0 else []
            for value in bad:
                # a float for an int field fails the type check first
                match = rf"{cls.__name__}\.{field}(=.* out of range| must be .*int)"
                with pytest.raises(UserError, match=match):
                    from_dict(cls, {field: value})
                checked += 1
    assert checked > 300
