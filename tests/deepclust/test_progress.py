"""Progress bars draw on a terminal only, unless UNIC_PROGRESS says otherwise."""

from __future__ import annotations

import io
import sys

import pytest

from deepclust import progress


@pytest.mark.parametrize(("env", "drawn"), [(None, False), ("1", True), ("0", False)])
def test_a_bar_draws_off_a_terminal_only_when_forced(monkeypatch, env, drawn):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    if env is None:
        monkeypatch.delenv(progress.ENV, raising=False)
    else:
        monkeypatch.setenv(progress.ENV, env)
    with progress.bar(total=3, desc="embedding", unit="img") as bar:
        assert bar.disable is not drawn
        bar.update(3)
    text = sys.stderr.getvalue()
    assert ("embedding" in text and "/3 " in text) is drawn, text
