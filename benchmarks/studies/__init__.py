"""One-off studies, each with its result files beside it in ``results/``; not part of the benchmark harness."""
