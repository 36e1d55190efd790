"""Registry of define-by-run search spaces: ``fn(trial, setting) -> dict of config overrides``.

Every name a space suggests is a field of its method's config (a test samples each space and
validates the result with the strict config parser), so a trial's parameters are exactly the
overrides it runs with. The ranges and their reasons are in docs/methods.md (each method's
"search space" section). Neighbour counts stop at the mined ``kmax`` (50 by default; less on
small sets).
"""

from __future__ import annotations

from typing import Any

from deepclust.registry import Registry
from trainables.methods import METHODS
from trainables.methods.base import DEFAULT_KMAX, SearchSpace

SPACES: Registry[SearchSpace] = Registry("search space")


def _none(
    trial: Any, setting: str = "clustering", kmax: int = DEFAULT_KMAX, num_clusters: int = 10
) -> dict[str, Any]:
    return {}


def is_empty(method: str) -> bool:
    """True when ``method`` has nothing to search (its runs use the fidelity's config)."""
    return METHODS.get(method).search_space is None


for _name in METHODS.names():  # each method declares its space beside its config
    SPACES.add(_name, METHODS.get(_name).search_space or _none)
