"""Optional integrations with other engines (Ray: RLlib, Ray Data, Ray tasks); ``pip install "qrag-gym[ray]"``.

Nothing in the core imports this package: ``qrag_gym``, ``qrag-cache`` and ``qrag-bench`` load Ray only
when ``--ray`` is given, so the core installs and tests without it (README, "Scaling out with Ray").
"""
