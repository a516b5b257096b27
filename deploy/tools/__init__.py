"""Offline tools on a run's outputs: evaluate, export, replay dumps, metrics plots."""
