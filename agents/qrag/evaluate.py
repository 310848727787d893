"""``qrag-evaluate``: greedy Q-RAG episodes on held-out data at several context lengths.

    qrag-evaluate --model runs/qa2/best --task qa2 --lengths 1000 4000 32000 128000 --episodes 200
    qrag-evaluate --model runs/niah/best --task niah:multikey_3 --lengths 4000 128000 --episodes 50
    qrag-evaluate --model runs/hotpotqa/best --task hotpotqa --episodes 86     # one natural length
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agents.qrag.checkpoint import load_model
from agents.qrag.config import NIAH_ALL, NIAH_PREFIX
from agents.qrag.inference import evaluate
from agents.qrag.networks import QNetwork
from qrag_gym.atomic import atomic_write_bytes
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.envs.babilong import BabilongEnv
from qrag_gym.envs.hotpotqa import HotpotQAEnv
from qrag_gym.envs.niah import NiahEnv
from qrag_gym.envs.retrieval import RetrievalEnv


def validation_env(network: QNetwork, task: str, tokens: int, data_dir: str | None) -> RetrievalEnv:
    """The validation env of ``task`` at ``tokens`` (HotpotQA questions have their own length).

    A fully fine-tuned model embeds the chunk texts itself, so its envs compute no frozen features.
    """
    config = network.config
    embedder = config.env_embedder
    if task.startswith(NIAH_PREFIX):
        return NiahEnv(variant=task[len(NIAH_PREFIX):], context_tokens=tokens, split="validation",
                       max_steps=config.max_steps, data_dir=data_dir, embedder=embedder)
    if task == "hotpotqa":
        return HotpotQAEnv(split="validation", data_dir=data_dir, max_steps=config.max_steps, embedder=embedder)
    return BabilongEnv(task=task, context_tokens=tokens, split="validation", max_steps=config.max_steps,
                       never_terminate=True, data_dir=data_dir, embedder=embedder)


def evaluate_lengths(model_dir: Path, task: str, lengths: list[int], episodes: int, data_dir: str | None = None,
                     threshold: float | None = None, shortlist: int | None = None, device: str = "cpu") -> list[dict]:
    """One row of mean metrics per context length (tokens), on the validation split; HotpotQA has one
    natural length, so one row with ``context_tokens`` None."""
    network = load_model(model_dir, device=device)
    rows = []
    for tokens in [None] if task == "hotpotqa" else lengths:
        env = validation_env(network, task, tokens, data_dir)
        start = time.time()
        metrics = evaluate(network, env, episodes, seed=20_000, threshold=threshold, shortlist=shortlist)
        rows.append({"task": task, "context_tokens": tokens, "episodes": episodes,
                     "seconds_per_episode": (time.time() - start) / episodes, **metrics})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qrag-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="folder with model.safetensors and config.json")
    parser.add_argument("--task", help="qa1..qa5, niah:<variant> or hotpotqa (default: the model's training task)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000, 4_000, 32_000, 128_000])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--threshold", type=float, help="Q-threshold stop (default: the model's, 0.5)")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    task = args.task or json.loads((args.model / "config.json").read_text())["task"]
    tasks = [NIAH_PREFIX + variant for variant in NIAH_VARIANTS] if task == NIAH_ALL else [task]
    rows = []
    for name in tasks:
        new = evaluate_lengths(args.model, name, args.lengths, args.episodes, args.data_dir, args.threshold,
                               device=args.device)
        rows += new
        for row in new:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
