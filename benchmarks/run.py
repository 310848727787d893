"""``qrag-bench`` / ``python -m qrag_benchmarks.run``: agents x tasks x lengths x seeds on held-out data.

    qrag-bench --quick                                   # offline, a few minutes on 2 CPU cores
    qrag-bench --agents dense-multistep my_pkg.mine:MyAgent --tasks qa2 --lengths 4K 128K --episodes 50
    qrag-bench --tasks niah:single_1 niah:multivalue hotpotqa --lengths 4K 32K --episodes 20
    qrag-bench show runs/mine --agent bm25 --task qa2 --length 4K --episode 3     # one episode, rendered

Tasks: BABILong ``qa1``..``qa5``, RULER NIAH ``niah:<variant>`` (single_1..3, multikey_1..3, multivalue,
multiquery) and ``hotpotqa`` (one natural length, recorded as ``doc``; no answer metric without an LLM).

Every episode goes through the one evaluation runner (:mod:`qrag_gym.evaluation`): it runs to the
step budget T, the agent decides what it keeps, and a cell is a pure function of (agent, task,
length, seed, settings). BABILong is reported on the official bAbI test stories with held-out books
(``--split auto``: the test files when the data folder has them, else the validation stories with a
notice); NIAH and HotpotQA on their validation split.

Cells run shortest length first, and the outputs in ``--out`` are rewritten after every finished
cell (see :mod:`qrag_benchmarks.report`). A folder that already holds results is refused unless
``--resume`` (keep the finished cells run under the same settings, drop and re-run the others) or
``--overwrite``. Agents with a ``learn`` method are trained once per task and seed on the *train*
split at ``--train-length``, then evaluated at every length.

``--ray [ADDRESS]`` runs each cell as a Ray task (:mod:`qrag_benchmarks.ray_cells`): same cells, same
runner, same records and outputs (README, "Scaling out with Ray").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
from tqdm.auto import tqdm

import qrag_gym
from qrag_agents.base import Agent, accepted_kwargs, make_agent, resolve_agent_class
from qrag_benchmarks.report import EPISODES_JSON, RUN_JSON, load_records, write_outputs
from qrag_gym.data.babi import TASKS
from qrag_gym.evaluation import Cell, make_eval_env, plan_cells, resolve_split, run_cell
from qrag_gym.data.paths import find_data_subdir
from qrag_gym.tasks import (ENV_IDS, NATURAL_LENGTH, READERS, TASK_NAMES, default_eval_split, env_kwargs, has_lengths,
                           parse_length, task_family)

ENV_ID = ENV_IDS["babilong"]
CHEAP_AGENTS = ("random", "oracle", "bm25", "bm25-multistep", "dense", "dense-multistep")
QUICK = {"agents": [*CHEAP_AGENTS, "qrag", "qrag-stage"], "tasks": ["qa1", "qa2"], "lengths": ["1K", "4K"], "episodes": 20}
"""The ``--quick`` preset (any option given explicitly still wins)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrag-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="qrag-bench show RUN --agent A --task T [--length L] --episode N renders "
                                            "one recorded episode of a run (see qrag-bench show --help)")
    parser.add_argument("--quick", action="store_true",
                        help=f"preset: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--agents", nargs="+", default=[*CHEAP_AGENTS, "qrag"],
                        help="built-in names or module.path:ClassName")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"any of: {' '.join(TASK_NAMES)}")
    parser.add_argument("--lengths", nargs="+", default=["1K", "4K", "32K", "128K"],
                        help="context lengths: 1K 4K 32K 128K 1M 10M or token counts")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per cell")
    parser.add_argument("--episodes-at", nargs="*", default=[], metavar="LENGTH=N",
                        help="episodes per cell at given lengths, e.g. 128K=20 1M=5")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--split", choices=("auto", "test", "validation"), default="auto",
                        help="auto: the official bAbI test stories where the data folder has them (else validation, "
                             "with a notice); NIAH and HotpotQA: validation")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="env step budget T (default: each env's own: 6 bAbI, 5 NIAH, 2 HotpotQA)")
    parser.add_argument("--train-steps", type=int, default=3_000, help="timesteps for agents that learn")
    parser.add_argument("--train-length", default="1K", help="context length of the training episodes")
    parser.add_argument("--data-dir", default=None, help="folder with babi/en-10k and noise/gutenberg "
                        "(default: $QRAG_DATA_DIR, then the user data folder)")
    parser.add_argument("--qrag-models", default=None, metavar="DIR",
                        help="the qrag agent loads DIR/<task>/best (NIAH variants fall back to DIR/niah/best); "
                             "default: the models that ship in the package")
    parser.add_argument("--shortlist", type=int, default=None, metavar="K",
                        help="qrag: certified faiss shortlist of K per position bucket on documents of 16,384+ chunks")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: a new runs/bench-<UTC time> folder, so no run replaces another)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished cells in --out that ran under the same settings; run the rest")
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run each cell as a Ray task (pip install \"qrag-gym[ray]\"): alone, on a Ray instance "
                             "started on this machine; with an address (auto, ray://HOST:10001), on that cluster")
    parser.add_argument("--ray-workers", type=int, default=None, metavar="N",
                        help="with --ray: at most N cells at once (and a local instance gets N CPUs); "
                             "default: as many as the cluster's CPUs allow")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, applying the ``--quick`` preset under any explicit option, and validate."""
    parser = build_parser()
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds must be non-negative, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.ray_workers is not None and args.ray_workers < 1:
        parser.error(f"--ray-workers must be at least 1, got {args.ray_workers}")
    if args.ray_workers is not None and args.ray is None:
        parser.error("--ray-workers sizes a --ray run: give --ray too")
    if args.shortlist is not None and args.shortlist < 1:
        parser.error(f"--shortlist must be at least 1, got {args.shortlist}")
    if args.resume and args.overwrite:
        parser.error("--resume keeps the results in --out and --overwrite replaces them: give one")
    if args.out is None:
        if args.resume or args.overwrite:
            parser.error("--resume and --overwrite act on an existing folder: name it with --out")
        args.out = Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S", time.gmtime())
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; name a folder")
    if not (args.resume or args.overwrite) and ((args.out / EPISODES_JSON).exists() or (args.out / RUN_JSON).exists()):
        parser.error(f"--out {args.out} already holds benchmark results: pass --resume to keep its finished cells "
                     "and run the rest, or --overwrite to replace them")
    try:
        args.agents, args.tasks, args.seeds = (list(dict.fromkeys(v)) for v in (args.agents, args.tasks, args.seeds))
        by_tokens = {tokens: (label, tokens) for label, tokens in map(parse_length, args.lengths)}
        args.lengths = list(by_tokens.values())  # "4K" and "4000" are one length: one cell, not two
        args.train_length = parse_length(args.train_length)
        args.episodes_at = episodes_at(args.episodes_at, args.lengths, args.tasks)
        for task in args.tasks:
            task_family(task)
            if args.split == "test" and default_eval_split(task, args.data_dir)[0] != "test" and task_family(task) != "babilong":
                raise ValueError(f"--split test: {task} has no test split (NIAH and HotpotQA are reported on "
                                 "validation); use --split auto")
        for name in args.agents:
            agent = make_agent(name, **agent_kwargs(name, 0, args))
            for task in args.tasks:  # e.g. qrag without a model for a task: say so now, not after other cells
                check = getattr(agent, "check_task", None)
                if callable(check):
                    check(task)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return args


def episodes_at(texts: Sequence[str], lengths: Sequence[tuple[str, int]], tasks: Sequence[str]) -> dict[str, int]:
    """``--episodes-at LENGTH=N`` as {planned length label: N}; a length may be written as ``4K`` or
    ``4000`` (matched by tokens), ``doc`` is the natural length of HotpotQA; one that matches nothing
    planned is an error, not a silent no-op."""
    labels = {tokens: label for label, tokens in lengths}
    overrides: dict[str, int] = {}
    for text in texts:
        length, sep, count = text.partition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise ValueError(f"bad --episodes-at {text!r}: expected LENGTH=N with N >= 1, e.g. 128K=20")
        if length.strip().lower() == NATURAL_LENGTH:
            if all(has_lengths(task) for task in tasks):
                raise ValueError(f"--episodes-at {text}: no task with one natural length (hotpotqa) is planned")
            overrides[NATURAL_LENGTH] = int(count)
            continue
        tokens = parse_length(length)[1]
        if tokens not in labels:
            raise ValueError(f"--episodes-at {text}: {length} is not among --lengths ({', '.join(labels.values())})")
        overrides[labels[tokens]] = int(count)
    return overrides


def make_env(task: str, tokens: int | None, split: str, args: argparse.Namespace) -> gym.Env:
    """A held-out evaluation env (run to T) or, for ``split="train"``, the env agents learn on."""
    if split == "train":
        extra = {} if args.max_steps is None else {"max_steps": args.max_steps}
        return gym.make(ENV_IDS[task_family(task)], **env_kwargs(task, tokens, "train"), data_dir=args.data_dir, **extra)
    return make_eval_env(task, tokens, split, max_steps=args.max_steps, data_dir=args.data_dir)


def plan(args: argparse.Namespace) -> list[Cell]:
    """Every cell of the run (:func:`qrag_gym.evaluation.plan_cells`)."""
    return plan_cells(args.agents, args.tasks, args.lengths, args.seeds, args.episodes, args.episodes_at)


def agent_kwargs(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the agent's constructor accepts, of those the harness offers."""
    return accepted_kwargs(name, {"seed": seed, "total_timesteps": args.train_steps, "models_dir": args.qrag_models,
                                  "shortlist": args.shortlist})


def cell_settings(agent: str, task: str, args: argparse.Namespace, splits: dict[str, str]) -> dict[str, Any]:
    """Everything besides (agent, task, length, seed) that a cell's records depend on: split, step
    budget, the data folders, the package version, the agent's settings and, for agents that load a
    model (``settings_fingerprint(task)``), a digest of it."""
    kwargs = agent_kwargs(agent, 0, args)
    settings: dict[str, Any] = {"split": splits[task], "max_steps": args.max_steps, "qrag_gym": qrag_gym.__version__,
                                "data": {sub: str(find_data_subdir(sub, args.data_dir))
                                         for sub in ("babi/en-10k", "noise/gutenberg", "hotpotqa")},
                                "agent_kwargs": {k: v for k, v in kwargs.items() if k != "seed"}}
    if callable(getattr(resolve_agent_class(agent), "learn", None)):
        settings["train_length"] = args.train_length[1]
    fingerprint = getattr(make_agent(agent, **kwargs), "settings_fingerprint", None)
    if callable(fingerprint):
        settings["model"] = fingerprint(task)
    return settings


def settings_id(settings: dict[str, Any]) -> str:
    """A short, stable fingerprint of a cell's settings, stored in each of its records."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trained_agent(cell: Cell, args: argparse.Namespace, cache: dict[tuple[str, str, int], Agent],
                  run_info: dict[str, Any]) -> Agent:
    """The cell's agent: built once per (agent, task, seed) and, if it learns, trained on the train split."""
    key = (cell.agent, cell.task, cell.seed)
    if key not in cache:
        agent = make_agent(cell.agent, **agent_kwargs(cell.agent, cell.seed, args))
        if callable(getattr(agent, "learn", None)):
            start = time.perf_counter()
            agent.learn(make_env(cell.task, args.train_length[1], "train", args), args.train_steps)
            run_info["train_seconds"][f"{cell.agent}/{cell.task}/seed{cell.seed}"] = round(time.perf_counter() - start, 1)
        cache[key] = agent
    return cache[key]


def kept_from_before(records: list[dict[str, Any]], cells: list[Cell], current: dict[tuple[str, str], str]
                     ) -> tuple[list[dict[str, Any]], set, list[str]]:
    """Earlier records worth keeping, the planned cells they finish, and a line per dropped cell.

    Cells this run does not plan are kept as they are (with the settings id they ran under). A planned
    cell is kept when its records ran under the settings this run would use (``current`` maps (agent,
    task) to a settings id) and it has at least the episodes asked, of which the first ``episodes`` are
    kept; one run under other settings, or interrupted, is dropped and run again.
    """
    def key(record: dict[str, Any]) -> tuple[str, str, str, int]:
        return (record["agent"], record["task"], record["length"], record["seed"])

    asked = {cell.key: cell.episodes for cell in cells}
    same = [r for r in records if key(r) not in asked or r.get("settings_id") == current.get((r["agent"], r["task"]))]
    other = sorted({key(r) for r in records} - {key(r) for r in same})
    counts = Counter(key(record) for record in same)
    finished = {k for k, episodes in asked.items() if counts[k] >= episodes}
    partial = sorted(k for k in asked if 0 < counts[k] and k not in finished)
    dropped = [f"{a} {t} {n} seed {s}: run under other settings" for a, t, n, s in other]
    dropped += [f"{a} {t} {n} seed {s}: unfinished ({counts[(a, t, n, s)]} episodes)" for a, t, n, s in partial]
    kept = [r for r in same if key(r) not in asked or (key(r) in finished and r["episode"] < asked[key(r)])]
    return kept, finished, dropped


def _env_info(tasks: Sequence[str]) -> dict[str, Any]:
    """Env id and answer reader; one string each for a bAbI-only run (as before), else per family."""
    families = list(dict.fromkeys(task_family(task) for task in tasks))
    if families == ["babilong"]:
        return {"env_id": ENV_ID, "reader": "qrag_gym.readers.answer_babi"}
    return {"env_id": {f: ENV_IDS[f] for f in families}, "reader": {f: READERS[f] for f in families}}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["show"]:  # qrag-bench show RUN ...: render one recorded episode
        from qrag_benchmarks.show import main as show

        return show(argv[1:])
    args = parse_args(argv)
    import torch  # after parsing: --help and argument errors answer without loading torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cells = plan(args)
    earlier = load_records(args.out) if args.resume else []
    splits = {task: resolve_split(task, args.split, args.data_dir) for task in args.tasks}
    settings = {pair: cell_settings(*pair, args, splits) for pair in sorted({(c.agent, c.task) for c in cells})}
    current = {pair: settings_id(value) for pair, value in settings.items()}
    records, finished, dropped = kept_from_before(earlier, cells, current)
    for line in dropped:
        print(f"--resume drops {line}", file=sys.stderr)
    todo = [cell for cell in cells if cell.key not in finished]
    run_info: dict[str, Any] = {
        "command": ["qrag-bench", *(argv if argv is not None else sys.argv[1:])], **_env_info(args.tasks),
        "qrag_gym": qrag_gym.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "train_seconds": {}, "splits": {task: splits[task] for task in args.tasks},
        "settings": {f"{a}/{t}": value for (a, t), value in settings.items()},
        "cells_planned": len(cells), "cells_skipped_as_finished": len(cells) - len(todo),
        "cells_dropped_on_resume": dropped}
    envs: dict[tuple[str, int | None], gym.Env] = {}
    agents: dict[tuple[str, str, int], Agent] = {}
    with tqdm(total=sum(c.episodes for c in todo), unit="ep", dynamic_ncols=True) as bar:
        if args.ray is not None and todo:
            from qrag_benchmarks.ray_cells import run_cells_on_ray

            records = run_cells_on_ray(todo, args, splits, current, records, run_info,
                                       write=lambda rows: write_outputs(args.out, rows, run_info),
                                       on_cell=lambda cell: bar.update(cell.episodes))
        else:
            for cell in todo:
                bar.set_description(f"{cell.agent} {cell.task} {cell.length} seed {cell.seed}")
                agent = trained_agent(cell, args, agents, run_info)
                if (cell.task, cell.tokens) not in envs:
                    envs[(cell.task, cell.tokens)] = make_env(cell.task, cell.tokens, splits[cell.task], args)
                env = envs[(cell.task, cell.tokens)]
                stamp = current[(cell.agent, cell.task)]
                records += [{**r, "settings_id": stamp} for r in run_cell(cell, agent, env, on_episode=lambda: bar.update(1))]
                run_info["cells_done"] = run_info.get("cells_done", 0) + 1
                write_outputs(args.out, records, run_info)
    if not todo:  # nothing to run: still write what --resume kept (it may have trimmed or dropped records)
        write_outputs(args.out, records, run_info)
    print(f"{len(todo)} cells run, {len(cells) - len(todo)} kept from before; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
