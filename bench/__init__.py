"""Benchmarks of virtlab against the bare tools doing the same work, measured in the same run.

``python -m bench`` runs them all; see ``bench/README.md``.
"""
