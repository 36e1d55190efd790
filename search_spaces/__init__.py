"""Optuna define-by-run search spaces, one function per method: ``SPACES.get(method)(trial,
setting)`` returns the trial's config overrides (every suggested name is a config field).

k-means and SS-k-means have nothing worth searching with a label-free objective at fixed k,
so their spaces are empty.
"""

from search_spaces.budgets import FIDELITIES, fidelity_overrides
from search_spaces.common import SPACES, is_empty

__all__ = ["FIDELITIES", "SPACES", "fidelity_overrides", "is_empty"]
