"""Typed, frozen, strict configs.

Configs are frozen dataclasses; defaults live only on the fields (with a why-comment beside
them). :func:`from_dict` is the one way to build a config from untrusted input (CLI, search
spaces, saved JSON): unknown keys are errors with a did-you-mean, and values are type-checked
(ints are accepted for float fields; bools are never accepted as ints).

Numbers are range-checked where the config is built: every int or float field is finite and
>= 0 unless its type narrows it further with :data:`Count` (sizes and counts, >= 1),
:data:`Rate` (learning rates, temperatures, > 0) or :data:`Fraction` (probabilities,
thresholds, momenta, shares of a set, in [0, 1]).

A choice field is typed ``Literal[...]`` listing exactly the values the code supports (the one
source of truth: module tuples of choices are ``typing.get_args`` of it, search spaces read
:func:`choices`). Configs inherit :class:`CheckedChoices`, so a config built directly, not
through :func:`from_dict`, refuses a value outside its Literal just as clearly.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from deepclust.errors import UserError

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a numeric field's value must lie in (``lo`` excluded when ``lo_open``)."""

    lo: float = 0.0
    hi: float = math.inf
    lo_open: bool = False

    def holds(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (value > self.lo if self.lo_open else value >= self.lo)
            and value <= self.hi
        )

    def describe(self) -> str:
        low = f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"
        return low if math.isinf(self.hi) else f"in [{self.lo:g}, {self.hi:g}]"


NON_NEGATIVE = Range(0.0)  # every plain int / float field
Count = Annotated[int, Range(1.0)]  # sizes, counts, epochs, heads, neighbours
Rate = Annotated[float, Range(0.0, lo_open=True)]  # learning rates, temperatures
Fraction = Annotated[float, Range(0.0, 1.0)]  # probabilities, thresholds, momenta, shares


def _check_type(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_check_type(v, args[0]) for v in value)
        return len(args) == len(value) and all(
            _check_type(v, a) for v, a in zip(value, args, strict=True)
        )
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    """How an error names a type: a Literal's values, else the type itself."""
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    return str(tp)


@functools.cache
def choice_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    """{field: allowed values} for every ``Literal``-typed init field of config class ``cls``."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if f.init and typing.get_origin(hints[f.name]) is typing.Literal
    }


def choices(cls: type, name: str) -> tuple[Any, ...]:
    """The values of config ``cls``'s Literal field ``name`` (e.g. a search space's categories)."""
    found = choice_fields(cls)
    if name not in found:
        raise ValueError(f"{cls.__name__}.{name} is not a Literal choice field")
    return found[name]


@functools.cache
def range_fields(cls: type) -> dict[str, Range]:
    """{field: Range} for every int / float init field of config ``cls`` (optional ones too:
    ``None`` is not range-checked)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        options = (
            typing.get_args(tp)
            if typing.get_origin(tp) in (typing.Union, types.UnionType)
            else (tp,)
        )
        for option in options:
            if typing.get_origin(option) is Annotated:
                base, *extras = typing.get_args(option)
                found = [e for e in extras if isinstance(e, Range)]
                if base in (int, float) and found:
                    out[f.name] = found[0]
            elif option in (int, float):
                out.setdefault(f.name, NON_NEGATIVE)
    return out


def check_ranges(cfg: Any) -> None:
    """UserError naming the field and its range when a number lies outside it (NaN and
    infinities never pass)."""
    for name, rng in range_fields(type(cfg)).items():
        value = getattr(cfg, name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not rng.holds(value):
            raise UserError(
                f"{type(cfg).__name__}.{name}={value!r} is out of range; it must be a finite "
                f"number {rng.describe()}"
            )


def check_choices(cfg: Any) -> None:
    """UserError naming the field and its valid values when a Literal field holds another."""
    for name, allowed in choice_fields(type(cfg)).items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise UserError(
                f"{type(cfg).__name__}.{name}={value!r} is not a choice; valid: "
                f"{', '.join(map(str, allowed))}"
            )


class CheckedChoices:
    """Base of every config dataclass: its ``__post_init__`` runs :func:`check_choices` and
    :func:`check_ranges` (a subclass defining its own ``__post_init__`` calls
    ``super().__post_init__()``)."""

    def __post_init__(self) -> None:
        check_choices(self)
        check_ranges(self)


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build ``cls`` from ``data`` strictly; raises UserError on unknown keys or bad types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(
                f"unknown key '{key}' for {cls.__name__}{guess}; valid: {', '.join(sorted(fields))}"
            )
        if not _check_type(value, hints[key]):
            raise UserError(
                f"{cls.__name__}.{key} must be {_describe(hints[key])}, got {value!r} "
                f"({type(value).__name__})"
            )
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        if typing.get_origin(hints[key]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (saved with every result)."""
    return dataclasses.asdict(cfg)


def parse_override(item: str, flag: str = "--set") -> tuple[str, Any]:
    """A command line's ``KEY=VALUE`` -> (KEY, VALUE parsed as JSON, else the plain string)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"{flag} expects KEY=VALUE, got '{item}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
