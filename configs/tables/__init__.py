"""Comparison tables for `python -m train.reproduce --table=NAME` (train/tables.py)."""
