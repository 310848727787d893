"""``qrag-evaluate``: one Q-RAG model on held-out data at several context lengths.

    qrag-evaluate --model runs/qa2/best --lengths 1K 4K 32K 128K --episodes 1000
    qrag-evaluate --model runs/niah/best --task niah:multikey_3 --lengths 4K 128K --episodes 50
    qrag-evaluate --model runs/hotpotqa/best --task hotpotqa --episodes 86     # one natural length

The episodes are the benchmark cells of ``qrag-bench --agents qrag`` (same seeds, same envs, same
runner in :mod:`qrag_gym.evaluation`), so both commands give identical records for one model.
BABILong is reported on the official bAbI test stories when the data folder has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qrag_gym.atomic import atomic_write_bytes
from qrag_gym.evaluation import group_summaries, make_eval_env, plan_cells, resolve_split, run_cell
from qrag_gym.tasks import NIAH_ALL, TASK_NAMES, expand, parse_length, task_family

AGENT_NAME = "qrag"


def model_task(model: Path) -> str:
    """The task a model folder was trained on (its ``config.json``), with an error naming the file."""
    path = model / "config.json"
    if not path.is_file():
        raise ValueError(f"--model {model}: no config.json there (is it a Q-RAG model folder such as runs/qa1/best?)")
    try:
        return str(json.loads(path.read_text())["task"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a Q-RAG config ({err}); pass --task") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qrag-evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="folder with model.safetensors and config.json")
    parser.add_argument("--task", help=f"any of {' '.join(TASK_NAMES)} or niah:all (default: the model's task)")
    parser.add_argument("--lengths", nargs="+", default=["1K", "4K", "32K", "128K"],
                        help="context lengths: 1K 4K 32K 128K 1M 10M or token counts")
    parser.add_argument("--episodes", type=int, default=200, help="episodes per length")
    parser.add_argument("--seed", type=int, default=0, help="cell seed (qrag-bench's --seeds)")
    parser.add_argument("--split", choices=("auto", "test", "validation"), default="auto",
                        help="auto: official bAbI test stories where present, else validation (NIAH/HotpotQA: validation)")
    parser.add_argument("--max-steps", type=int, help="step budget T (default: the env's own)")
    parser.add_argument("--threshold", type=float, help="Q-threshold stop (default: the model's, 0.5)")
    parser.add_argument("--shortlist", type=int, help="certified shortlist size on documents of 16,384+ chunks")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the summaries and per-episode records to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    for name, value, low in (("--episodes", args.episodes, 1), ("--seed", args.seed, 0), ("--threads", args.threads, 1),
                             ("--max-steps", args.max_steps, 1), ("--shortlist", args.shortlist, 1)):
        if value is not None and value < low:
            parser.error(f"{name} must be at least {low}, got {value}")
    if not (args.model / "model.safetensors").is_file():
        parser.error(f"--model {args.model}: no model.safetensors there (train one with qrag-train --out DIR; "
                     "the model is DIR/best)")
    if args.json and args.json.exists() and not args.overwrite:
        parser.error(f"--json {args.json} exists: pass --overwrite to replace it")
    try:
        args.lengths = [parse_length(text) for text in args.lengths]
        task = args.task or model_task(args.model)
        args.tasks = expand(task)
        for name in args.tasks:
            task_family(name)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch  # after parsing: --help and argument errors answer without loading torch

    from qrag_agents.qrag.agent import QRAGAgent

    if args.threads:
        torch.set_num_threads(args.threads)
    agent = QRAGAgent(model=str(args.model), threshold=args.threshold, shortlist=args.shortlist, device=args.device)
    records = []
    for cell in plan_cells([AGENT_NAME], args.tasks, args.lengths, [args.seed], args.episodes):
        env = make_eval_env(cell.task, cell.tokens, resolve_split(cell.task, args.split, args.data_dir),
                            max_steps=args.max_steps, data_dir=args.data_dir)
        new = run_cell(cell, agent, env)
        records += new
        row = group_summaries(new, ("task", "length"))[0]
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        summaries = group_summaries(records, ("task", "length"))
        atomic_write_bytes(args.json, json.dumps({"command": ["qrag-evaluate", *(argv or sys.argv[1:])],
                                                  "summaries": summaries, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
