"""Connecting to Ray for the commands that scale out (``qrag-cache warm --ray``, ``qrag-bench --ray``).

Workers read the same data folder and write the same embedding cache as the driver, so the
variables that locate them (and keep the Hugging Face hub offline) travel in the job's runtime
environment; their paths are made absolute because a worker's working folder is not the driver's.
On a multi-node cluster those paths must exist on every node (a shared file system, or the same
layout everywhere): see README, "Scaling out with Ray".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

FORWARDED_ENV = ("QRAG_DATA_DIR", "QRAG_CACHE_DIR", "HF_HUB_OFFLINE", "HF_HOME", "XDG_CACHE_HOME")
"""Driver environment variables every Ray worker of a qrag-gym job gets."""
PATH_ENV = {"QRAG_DATA_DIR", "QRAG_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"}
LOCAL = "local"
"""``--ray`` without an address: start a Ray instance on this machine for the duration of the command."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or an ImportError that says which extra to install."""
    try:
        import ray
    except ImportError as err:
        raise ImportError('this needs Ray: pip install "qrag-gym[ray]" (Ray Data, RLlib and Ray Core)') from err
    return ray


def worker_env() -> dict[str, str]:
    """The :data:`FORWARDED_ENV` variables set here, paths made absolute."""
    env = {}
    for name in FORWARDED_ENV:
        value = os.environ.get(name)
        if value:
            env[name] = str(Path(value).expanduser().resolve()) if name in PATH_ENV else value
    return env


def init_ray(address: str | None = LOCAL, num_cpus: int | None = None) -> ModuleType:
    """Connect to Ray once per process and return the module.

    ``address`` is :data:`LOCAL` (or ``None``) to start a private local instance (``num_cpus`` of this
    machine's CPUs, default all), or anything ``ray.init(address=...)`` takes: ``"auto"`` for the
    cluster this machine belongs to (``ray start --head`` / ``ray up``), ``"ray://HOST:10001"`` for a
    remote one. A process already connected (a notebook, a test session) keeps its connection.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"num_cpus must be at least 1, got {num_cpus}")
    options = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False, "logging_level": logging.WARNING}
    if address in (None, LOCAL):
        ray.init(num_cpus=num_cpus, **options)
    else:
        if num_cpus is not None:
            raise ValueError(f"num_cpus sizes a local Ray instance; the cluster at {address!r} has its own CPUs")
        ray.init(address=address, **options)
    return ray


__all__ = ["FORWARDED_ENV", "LOCAL", "init_ray", "require_ray", "worker_env"]
