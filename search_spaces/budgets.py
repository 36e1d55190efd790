"""How much each trial and each final run trains: the search *fidelity*.

* ``full``: the methods' own defaults (the paper-derived configurations; GPU clusters).
* ``laptop``: fewer restarts and optimiser steps so that a search of every method on a small
  benchmark fits a 2-core machine (the default when the cluster has no GPU). The searched
  hyperparameters are untouched; a trial's suggestions override these values.
* ``smoke``: each method's ``smoke`` overrides (tests, ``--smoke-test``).

The final seeds of a search are run at the same fidelity as its trials, so the leaderboard
reports the configuration that was selected, not a different one.
"""

from __future__ import annotations

from typing import Any

FIDELITIES = ("full", "laptop", "smoke")

# deviation: fewer heads/steps than the methods' defaults, for CPU-only machines (see above)
LAPTOP: dict[str, dict[str, Any]] = {
    "unic": {"epochs": 30},
    "scan": {"num_heads": 2, "epochs": 30},
    "scan_selflabel": {"epochs": 10, "min_steps": 100},
    "temi": {"num_heads": 2, "epochs": 10, "min_steps": 250},
    "iic": {"epochs": 10, "min_steps": 150, "num_subheads": 2},
    "spice": {"num_heads": 2, "epochs": 5, "semi_epochs": 10, "semi_min_steps": 250},
}


def fidelity_overrides(method: str, fidelity: str) -> dict[str, Any]:
    """Config overrides of ``method`` at ``fidelity`` (validated by the method's config)."""
    from trainables.methods import METHODS

    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {fidelity!r}")
    if fidelity == "smoke":
        return dict(METHODS.get(method).smoke)
    if fidelity == "laptop":
        return dict(LAPTOP.get(method, {}))
    return {}
