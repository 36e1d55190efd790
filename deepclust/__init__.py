"""deepclust: the Ray-free library under unic-orchestrator.

Datasets, backbones, the embedder, exact kNN, artifacts, metrics and configs live here as
plain Python/torch/numpy code. Nothing in this package imports ``ray`` or ``optuna``
(tests/test_imports.py walks the AST to enforce it), so every algorithm runs and is tested
without a cluster; ``orchestrator/`` and ``trainables/`` wrap it for Ray.
"""

__version__ = "0.1.0"
