"""Benchmarks: scripts that measure qrag_gym and the agents and commit their tables under ``results/``."""
