"""Registry of define-by-run search spaces: ``fn(trial) -> dict of constant overrides``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepclust.registry import Registry

SearchSpace = Callable[[Any], dict[str, Any]]

SPACES: Registry[SearchSpace] = Registry("search space")


def _kmeans_space(trial: Any) -> dict[str, Any]:
    # Nothing to search: k is fixed by the benchmark, and restarts only trade time for inertia.
    return {}


SPACES.add("kmeans", _kmeans_space)
