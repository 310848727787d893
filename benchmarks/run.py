"""``qrag-bench`` / ``python -m benchmarks.run``: agents x tasks x lengths x seeds on the validation split.

    qrag-bench --quick                                   # offline, a few minutes on 2 CPU cores
    qrag-bench --agents dense-multistep my_pkg.mine:MyAgent --tasks qa2 --lengths 4K 128K --episodes 50
    qrag-bench --tasks niah:single_1 niah:multivalue hotpotqa --lengths 4K 32K --episodes 20

Tasks: BABILong ``qa1``..``qa5``, RULER NIAH ``niah:<variant>`` (single_1..3, multikey_1..3, multivalue,
multiquery) and ``hotpotqa`` (one natural length, recorded as ``doc``; no answer metric without an LLM).

Cells run shortest length first, and the outputs in ``--out`` are rewritten after every finished
cell (see :mod:`benchmarks.report`); ``--resume`` skips the cells a previous run there finished.
Agents with a ``learn`` method are trained once per task and seed on the *train* split at
``--train-length``, then evaluated at every length.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import torch
from tqdm.auto import tqdm

import qrag_gym
from agents.base import Agent, make_agent, resolve_agent_class
from benchmarks.harness import (ENV_IDS, NATURAL_LENGTH, READERS, TASK_NAMES, Cell, env_kwargs, has_lengths,
                                parse_length, run_cell, task_family)
from benchmarks.report import load_records, write_outputs
from qrag_gym.data.babi import TASKS

ENV_ID = ENV_IDS["babilong"]
CHEAP_AGENTS = ("random", "oracle", "bm25", "bm25-multistep", "dense", "dense-multistep")
QUICK = {"agents": list(CHEAP_AGENTS), "tasks": ["qa1", "qa2"], "lengths": ["1K", "4K"], "episodes": 20}
"""The ``--quick`` preset (any option given explicitly still wins)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrag-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"preset: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--agents", nargs="+", default=list(CHEAP_AGENTS),
                        help="built-in names or module.path:ClassName")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"any of: {' '.join(TASK_NAMES)}")
    parser.add_argument("--lengths", nargs="+", default=["1K", "4K", "32K", "128K"],
                        help="context lengths: 1K 4K 32K 128K 1M 10M or token counts")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per cell")
    parser.add_argument("--episodes-at", nargs="*", default=[], metavar="LENGTH=N",
                        help="episodes per cell at given lengths, e.g. 128K=20 1M=5")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-steps", type=int, default=None,
                        help="env step budget T (default: each env's own: 6 bAbI, 5 NIAH, 2 HotpotQA)")
    parser.add_argument("--train-steps", type=int, default=3_000, help="timesteps for agents that learn")
    parser.add_argument("--train-length", default="1K", help="context length of the training episodes")
    parser.add_argument("--data-dir", default=None, help="folder with babi/en-10k and noise/gutenberg "
                        "(default: $QRAG_DATA_DIR, then the user data folder)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")
    parser.add_argument("--resume", action="store_true", help="keep the finished cells found in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, applying the ``--quick`` preset under any explicit option, and validate."""
    parser = build_parser()
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    try:
        args.lengths = [parse_length(text) for text in args.lengths]
        args.train_length = parse_length(args.train_length)
        args.episodes_at = dict(_override(text) for text in args.episodes_at)
        for task in args.tasks:
            task_family(task)
        for name in args.agents:
            resolve_agent_class(name)
    except ValueError as err:
        parser.error(str(err))
    return args


def _override(text: str) -> tuple[str, int]:
    length, sep, count = text.partition("=")
    if not sep or not count.isdigit() or int(count) < 1:
        raise ValueError(f"bad --episodes-at {text!r}: expected LENGTH=N with N >= 1, e.g. 128K=20")
    return parse_length(length)[0], int(count)


def make_env(task: str, tokens: int | None, split: str, args: argparse.Namespace) -> gym.Env:
    extra = {} if args.max_steps is None else {"max_steps": args.max_steps}
    return gym.make(ENV_IDS[task_family(task)], **env_kwargs(task, tokens, split), data_dir=args.data_dir, **extra)


def plan(args: argparse.Namespace) -> list[Cell]:
    """Every cell, shortest length first (long contexts are the expensive, last ones); a task with one
    natural length (HotpotQA) gets one cell per agent and seed, length :data:`NATURAL_LENGTH`, first."""
    natural = [Cell(agent, task, NATURAL_LENGTH, None, seed, args.episodes_at.get(NATURAL_LENGTH, args.episodes))
               for task in args.tasks if not has_lengths(task) for seed in args.seeds for agent in args.agents]
    return natural + [Cell(agent, task, label, tokens, seed, args.episodes_at.get(label, args.episodes))
                      for label, tokens in sorted(args.lengths, key=lambda length: length[1])
                      for task in args.tasks if has_lengths(task) for seed in args.seeds for agent in args.agents]


def trained_agent(cell: Cell, args: argparse.Namespace, cache: dict[tuple[str, str, int], Agent],
                  run_info: dict[str, Any]) -> Agent:
    """The cell's agent: built once per (agent, task, seed) and, if it learns, trained on the train split."""
    key = (cell.agent, cell.task, cell.seed)
    if key not in cache:
        agent = make_agent(cell.agent, seed=cell.seed, total_timesteps=args.train_steps)
        if callable(getattr(agent, "learn", None)):
            start = time.perf_counter()
            agent.learn(make_env(cell.task, args.train_length[1], "train", args), args.train_steps)
            run_info["train_seconds"][f"{cell.agent}/{cell.task}/seed{cell.seed}"] = round(time.perf_counter() - start, 1)
        cache[key] = agent
    return cache[key]


def kept_from_before(records: list[dict[str, Any]], cells: list[Cell]) -> tuple[list[dict[str, Any]], set]:
    """Earlier records worth keeping: finished planned cells, and cells this run does not plan at all.

    A planned cell with fewer episodes than asked (an interrupted cell) is dropped and run again.
    """
    def key(record: dict[str, Any]) -> tuple[str, str, str, int]:
        return (record["agent"], record["task"], record["length"], record["seed"])

    counts = Counter(key(record) for record in records)
    finished = {cell.key for cell in cells if counts[cell.key] >= cell.episodes}
    planned = {cell.key for cell in cells}
    return [r for r in records if key(r) in finished or key(r) not in planned], finished


def _env_info(tasks: Sequence[str]) -> dict[str, Any]:
    """Env id and answer reader; one string each for a bAbI-only run (as before), else per family."""
    families = list(dict.fromkeys(task_family(task) for task in tasks))
    if families == ["babilong"]:
        return {"env_id": ENV_ID, "reader": "qrag_gym.readers.answer_babi"}
    return {"env_id": {f: ENV_IDS[f] for f in families}, "reader": {f: READERS[f] for f in families}}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cells = plan(args)
    records, finished = kept_from_before(load_records(args.out) if args.resume else [], cells)
    todo = [cell for cell in cells if cell.key not in finished]
    run_info: dict[str, Any] = {
        "command": ["qrag-bench", *(argv if argv is not None else sys.argv[1:])], **_env_info(args.tasks),
        "qrag_gym": qrag_gym.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "train_seconds": {},
        "cells_planned": len(cells), "cells_skipped_as_finished": len(cells) - len(todo)}
    envs: dict[tuple[str, int | None], gym.Env] = {}
    agents: dict[tuple[str, str, int], Agent] = {}
    with tqdm(total=sum(c.episodes for c in todo), unit="ep", dynamic_ncols=True) as bar:
        for cell in todo:
            bar.set_description(f"{cell.agent} {cell.task} {cell.length} seed {cell.seed}")
            agent = trained_agent(cell, args, agents, run_info)
            if (cell.task, cell.tokens) not in envs:
                envs[(cell.task, cell.tokens)] = make_env(cell.task, cell.tokens, "validation", args)
            env = envs[(cell.task, cell.tokens)]
            records += run_cell(cell, agent, env, on_episode=lambda: bar.update(1))
            run_info["cells_done"] = run_info.get("cells_done", 0) + 1
            write_outputs(args.out, records, run_info)
    print(f"{len(todo)} cells run, {len(cells) - len(todo)} kept from before; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
