"""Benchmarks: scripts that measure qrag_gym and the agents, committing their tables under ``results/``.

The comparison harness (agents x tasks x lengths x seeds, per-episode records, a table and a plot) is
``python -m benchmarks.run`` (console script ``qrag-bench``); ``cost_curve``, ``encoder_speed``,
``shortlist_agreement`` and ``qrag_lengths`` measure long contexts, the encoder and Q-RAG checkpoints.
"""
