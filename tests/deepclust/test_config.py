from dataclasses import FrozenInstanceError, dataclass
from typing import Literal

import pytest

from deepclust.config import from_dict, parse_override, to_dict
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
