"""How much each trial and each final run trains: the search *fidelity*.

* ``full``: the methods' own defaults (the paper-derived configurations; GPU clusters).
* ``laptop``: the default when the cluster has no GPU. Every baseline trains its default
  number of steps (a search must compare configurations that have converged, and its first
  trial is the default configuration, see orchestrator/search.py); what is cut is TEMI's
  number of MLP heads trained side by side (one instead of four: each costs as much as the
  run) and UNIC's floor of 8,000 steps on small sets (it keeps its 100 epochs: 5,700 steps on
  1,797 images) and SPICE's number of self-training heads (two instead of five; its FixMatch
  stage keeps every step). The three methods with MLP heads (UNIC, TEMI, SPICE) also train in
  bf16 autocast where the CPU has native bf16 units, as every method does on a GPU
  (trainables/loop.py); fp32 elsewhere. The searched hyperparameters are untouched; a
  trial's suggestions override these values.
* ``smoke``: each method's ``smoke`` overrides (tests, ``--smoke-test``).

The final seeds of a search are run at the same fidelity as its trials, so the leaderboard
reports the configuration that was selected, not a different one.
"""

from __future__ import annotations

from typing import Any

FIDELITIES = ("full", "laptop", "smoke")


def fidelity_overrides(method: str, fidelity: str) -> dict[str, Any]:
    """Config overrides of ``method`` at ``fidelity`` (validated by the method's config)."""
    from trainables.methods import METHODS

    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {fidelity!r}")
    if fidelity == "smoke":
        return dict(METHODS.get(method).smoke)
    if fidelity == "laptop":
        return dict(METHODS.get(method).laptop)
    return {}
