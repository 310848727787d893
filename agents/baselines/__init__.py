"""Baselines Q-RAG must beat: random, oracle (upper bound), BM25, frozen dense retrieval, SB3 on a shortlist view.

Each module is imported on demand by :func:`qrag_agents.make_agent`, so the cheap baselines never load
stable-baselines3 or the embedder.
"""
