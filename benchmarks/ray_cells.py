"""``qrag-bench --ray [ADDRESS]``: every (agent, task, length, seed) cell as one Ray task.

Ray only distributes: each task builds the cell's agent and env with the functions the local loop
uses (:func:`qrag_benchmarks.run.trained_agent`, :func:`qrag_benchmarks.run.make_env`) and plays it
through the one evaluation runner (:func:`qrag_gym.evaluation.run_cell`). A cell is a pure function
of (agent, task, length, seed, settings) (README, "One evaluation path"), so the records equal a
local run's, and the outputs are rewritten atomically after every finished cell, in plan order,
exactly as the local loop writes them: an interrupted run continues with ``--resume``.

What differs from the local loop: an agent that learns is trained in every cell's task (locally,
once per agent, task and seed), so training is repeated per length, and each episode's ``seconds``
is measured on whichever worker ran it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from qrag_gym.evaluation import Cell, run_cell
from qrag_gym.integrations.ray_cluster import init_ray


def play_cell(cell: Cell, args: argparse.Namespace, split: str, stamp: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One cell's records (stamped with its settings id) and any training time, on whichever worker runs it."""
    from qrag_benchmarks.run import make_env, trained_agent

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info: dict[str, Any] = {"train_seconds": {}}
    agent = trained_agent(cell, args, {}, info)
    env = make_env(cell.task, cell.tokens, split, args)
    return [{**record, "settings_id": stamp} for record in run_cell(cell, agent, env)], info["train_seconds"]


def run_cells_on_ray(todo: list[Cell], args: argparse.Namespace, splits: dict[str, str],
                     stamps: dict[tuple[str, str], str], kept: list[dict[str, Any]], run_info: dict[str, Any],
                     write: Callable[[list[dict[str, Any]]], None], on_cell: Callable[[Cell], None]) -> list[dict[str, Any]]:
    """Run ``todo`` as Ray tasks, at most ``args.ray_workers`` at once (default: as many as Ray schedules).

    After every finished cell, ``write`` gets ``kept`` plus the finished cells' records in plan order
    (the order the local loop produces); the full list is returned.
    """
    ray = init_ray(args.ray, args.ray_workers if args.ray in (None, "local") else None)
    absolute = {name: str(Path(getattr(args, name)).resolve()) for name in ("data_dir", "qrag_models") if getattr(args, name)}
    args = argparse.Namespace(**{**vars(args), **absolute})  # a worker's working folder is not the driver's
    remote = ray.remote(num_cpus=1)(play_cell)
    limit = args.ray_workers or len(todo)
    run_info["ray"] = {"address": args.ray, "cluster_cpus": ray.cluster_resources().get("CPU"), "cells_in_flight": limit}
    done: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    queue = list(todo)
    pending: dict[Any, Cell] = {}
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                cell = queue.pop(0)
                pending[remote.remote(cell, args, splits[cell.task], stamps[(cell.agent, cell.task)])] = cell
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            records, train_seconds = ray.get(ready[0])
            done[cell.key] = records
            run_info["train_seconds"].update(train_seconds)
            run_info["cells_done"] = run_info.get("cells_done", 0) + 1
            write(kept + [record for c in todo if c.key in done for record in done[c.key]])
            on_cell(cell)
    finally:
        for ref in pending:  # an error or Ctrl-C: stop the cells still running; --resume re-runs them
            ray.cancel(ref, force=True)
    return kept + [record for c in todo for record in done[c.key]]


__all__ = ["play_cell", "run_cells_on_ray"]
