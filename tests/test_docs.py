"""The docs name tests that exist: every ``path.py::test_name`` in docs/*.md is a test function
(a bare ``path.py::test_name`` reads the path of the row's first reference)."""

import re

from tests.conftest import REPO

REF = re.compile(r"`((?:tests/[\w/]+/)?(test_\w+\.py))?::(test_\w+)`")


def test_every_test_the_docs_name_exists():
    checked = 0
    for doc in sorted((REPO / "docs").glob("*.md")):
        files = {p.name: p for p in (REPO / "tests").rglob("test_*.py")}
        for line in doc.read_text().splitlines():
            current = None
            for path, name, test in REF.findall(line):
                if name:  # a path names its file; a bare file name the one of that name
                    current = REPO / path if "/" in path else files.get(name)
                    assert current is not None and current.is_file(), (
                        f"{doc.name}: no test file {path or name}"
                    )
                assert current is not None, f"{doc.name}: ::{test} without a file"
                assert re.search(rf"^def {test}\(", current.read_text(), re.M), (
                    f"{doc.name}: {current.name} has no {test}"
                )
                checked += 1
    assert checked >= 20
