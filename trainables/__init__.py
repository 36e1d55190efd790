"""What gets trained: clustering methods (one file each), their losses and heads.

Method files never import Ray; only the thin Ray Train adapters in this package may
(enforced by tests/test_imports.py).
"""
