"""Progress bars for the long stages (embedding, kNN mining, each search, each method's seed
runs): counts, rate and ETA on a terminal, nothing elsewhere.

A bar draws only when stderr is a terminal (tqdm's ``disable=None``): a log file or CI output
keeps each stage's one summary line instead of hundreds of redraws. ``UNIC_PROGRESS=1`` draws
bars anywhere (e.g. through ``tee``), ``UNIC_PROGRESS=0`` nowhere. A finished bar is cleared
(``leave=False``); the stage's summary line says what it did. Log lines printed while a bar is
up go through ``tqdm.write`` (``orchestrator.cli``'s console handler), so they never split it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

ENV = "UNIC_PROGRESS"  # 1: always draw, 0: never, unset: on a terminal


def bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
):
    """A ``tqdm`` bar that shows only on a terminal and clears itself when done."""
    from tqdm.auto import tqdm

    forced = os.environ.get(ENV, "").strip()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable={"1": False, "0": True}.get(forced),
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )
