"""Benchmarks: scripts that measure qrag_gym and the agents, committing their tables under ``results/``.

The comparison harness (agents x tasks x lengths x seeds, per-episode records, a table and a plot) is
``python -m qrag_benchmarks.run`` (console script ``qrag-bench``); every episode goes through the one
evaluation runner, :mod:`qrag_gym.evaluation`. ``cost_curve``, ``encoder_speed``,
``shortlist_agreement`` and ``qa1_first_step`` are studies of long contexts, the encoder and a Q-RAG
checkpoint.
"""
