"""Losses as pure functions: one file per family, paper reference and shapes in docstrings."""
