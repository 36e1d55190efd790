"""A minimal name -> object registry that fails loudly.

Duplicate registration raises (two methods silently shadowing each other is a bug that
otherwise shows up as wrong numbers), and an unknown name raises a :class:`UserError` listing
the valid names. Registries are filled by explicit import lists in their packages so their
contents never depend on import order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from deepclust.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind (``"method"``, ``"dataset"``, ``"backbone"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``; raises ValueError on a duplicate name."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} '{name}' in registry")
        self._items[name] = obj

    def get(self, name: str, hint: str = "") -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._items, hint) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
