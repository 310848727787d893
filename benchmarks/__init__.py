"""The comparison harness: agents x tasks x lengths x seeds, with per-episode records, a table and a plot.

Entry point: ``python -m benchmarks.run`` (console script ``qrag-bench``).
"""
