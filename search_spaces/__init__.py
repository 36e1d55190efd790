"""Optuna define-by-run search spaces, one function per method (filled by the sweep issue).

k-means has nothing worth searching with a label-free objective at fixed k, so its space is
empty; see search_spaces/common.py for the shared helpers.
"""

from search_spaces.common import SPACES

__all__ = ["SPACES"]
