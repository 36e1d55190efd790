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
    "unic": {"num_heads": 2, "min_steps": 1500},
    "scan": {"num_heads": 2, "min_steps": 1500},
    "scan_selflabel": {"epochs": 20, "min_steps": 200},
    "temi": {"num_heads": 2, "epochs": 20, "min_steps": 500},
    "iic": {"epochs": 20, "min_steps": 300},
    "spice": {"num_heads": 2, "semi_epochs": 30, "semi_min_steps": 500},
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
