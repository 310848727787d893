"""``qrag-evaluate``: greedy Q-RAG episodes on held-out stories and books at several context lengths.

    qrag-evaluate --model runs/qa2/best --task qa2 --lengths 1000 4000 32000 128000 --episodes 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agents.qrag.checkpoint import load_model
from agents.qrag.inference import evaluate
from qrag_gym.envs.babilong import BabilongEnv


def evaluate_lengths(model_dir: Path, task: str, lengths: list[int], episodes: int, data_dir: str | None = None,
                     threshold: float | None = None) -> list[dict]:
    """One row of mean metrics per context length (tokens), on the validation split."""
    network = load_model(model_dir)
    rows = []
    for tokens in lengths:
        env = BabilongEnv(task=task, context_tokens=tokens, split="validation", max_steps=network.config.max_steps,
                          never_terminate=True, data_dir=data_dir, embedder=network.config.encoder)
        start = time.time()
        metrics = evaluate(network, env, episodes, seed=20_000, threshold=threshold)
        rows.append({"task": task, "context_tokens": tokens, "episodes": episodes,
                     "seconds_per_episode": (time.time() - start) / episodes, **metrics})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qrag-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="folder with model.safetensors and config.json")
    parser.add_argument("--task", help="qa1..qa5 (default: the task the model was trained on)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000, 4_000, 32_000, 128_000])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--threshold", type=float, help="Q-threshold stop (default: the model's, 0.5)")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    task = args.task or json.loads((args.model / "config.json").read_text())["task"]
    rows = evaluate_lengths(args.model, task, args.lengths, args.episodes, args.data_dir, args.threshold)
    for row in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
