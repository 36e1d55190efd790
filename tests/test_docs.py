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


def _documented_commands() -> list[tuple[str, str, bool]]:
    """(file, command, whole) for every command line in README.md and docs/*.md that runs the
    project's CLIs or benchmarks: fenced code (line continuations joined; ``whole``) and
    inline code (a flag mentioned in a sentence; not ``whole``)."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if "python -m orchestrator." in line or "python bench/" in line:
                    found.append((doc.name, line.split("  #")[0].strip(), True))
        for line in re.findall(r"`([^`\n]*python -m orchestrator\.[^`\n]*)`", text):
            found.append((doc.name, line.strip(), False))
    return found


def test_every_documented_command_names_real_flags_and_scripts():
    """Each documented ``python -m orchestrator.sweep|train`` command in a code block parses
    with the CLI's own parser, every flag and value as written (placeholders such as
    ``<file>`` or ``N`` stand for a value); each flag named inline exists; each
    ``python bench/X.py`` script exists."""
    import shlex

    from orchestrator import sweep, train

    parsers = {"orchestrator.sweep": sweep.build_parser, "orchestrator.train": train.build_parser}
    checked = 0
    for doc, line, whole in _documented_commands():
        words = shlex.split(line)
        if "python" in words and words[words.index("python") + 1] != "-m":
            script = words[words.index("python") + 1]
            assert (REPO / script).is_file(), f"{doc}: {line}"
            checked += 1
            continue
        start = words.index("-m") + 1
        module, argv = words[start], words[start + 1 :]
        if module not in parsers:
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{doc}: {line}"
            checked += 1
            continue
        parser = parsers[module]()
        if not whole:  # a flag named in a sentence: it exists
            flags = {f for action in parser._actions for f in action.option_strings}
            for word in argv:
                assert not word.startswith("-") or word in flags, f"{doc}: `{line}`"
            checked += 1
            continue
        if "--help" in argv:
            continue
        argv = ["2" if w == "N" else re.sub(r"<[^>]+>", "x", w) for w in argv]
        try:
            parser.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"{doc}: `{line}` does not parse") from None
        checked += 1
    assert checked >= 20, checked
