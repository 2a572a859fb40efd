"""Operator tools over a deployment's cache: the dedup audit, threshold tuning, batch runs and
their reports."""
