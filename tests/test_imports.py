"""Architecture rules checked on the source (AST), not by convention.

* ``ray`` is imported only in ``orchestrator/`` and ``trainables/``; the library package
  ``deepclust`` imports neither ``ray`` nor ``optuna``; ``ray.init`` is called only in
  ``orchestrator/ray_env.py``.
* every Ray symbol the project uses imports on the pinned Ray.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["deepclust", "orchestrator", "trainables", "search_spaces"]


def _modules():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _imported_roots(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_ray_and_optuna_stay_at_the_edges():
    offenders = []
    for path, tree in _modules():
        rel = path.relative_to(REPO)
        roots = set(_imported_roots(tree))
        if "ray" in roots and rel.parts[0] not in ("orchestrator", "trainables"):
            offenders.append(f"{rel} imports ray")
        if rel.parts[0] == "deepclust" and roots & {"ray", "optuna"}:
            offenders.append(f"{rel} imports {roots & {'ray', 'optuna'}}")
        if rel.parts[0] == "trainables" and rel.parts[1] == "methods" and "ray" in roots:
            offenders.append(f"{rel}: method files stay Ray-free")
    assert not offenders, offenders


def test_only_ray_env_calls_ray_init():
    callers = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "init"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "ray"
            ):
                callers.append(str(path.relative_to(REPO)))
    assert callers == ["orchestrator/ray_env.py"]


def test_pinned_ray_symbols_import():
    ray = pytest.importorskip("ray")
    assert ray.__version__.startswith("2.60.")
    from ray.data import ActorPoolStrategy  # noqa: F401
    from ray.data.extensions import ArrowTensorArray  # noqa: F401
