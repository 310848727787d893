"""Q-RAG checkpoints on held-out stories and books at several context lengths, as a committed table.

    python -m benchmarks.qrag_lengths --runs runs --tasks qa1 qa2 qa3 --lengths 1000 4000 32000 128000

reads ``runs/<task>/best`` for each task and writes ``benchmarks/results/qrag_lengths.{json,md}``
after every (task, length) cell, so an interrupted sweep keeps what finished.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from agents.qrag.evaluate import evaluate_lengths
from benchmarks.results_io import RESULTS_DIR, markdown_table, write_atomic, write_json

COLUMNS = ("success_at_k", "success_at_t", "f1", "kept", "answer_accuracy", "seconds_per_episode")


def ci95(rate: float, episodes: int) -> float:
    """Half-width of the normal-approximation 95% interval of a success rate: how far apart two cells must be."""
    return 1.96 * math.sqrt(rate * (1.0 - rate) / max(episodes, 1))


def lengths_table(rows: list[dict]) -> str:
    """One markdown row per (task, length)."""
    header = ["task", "tokens", "episodes", *COLUMNS[:1], "± 95%", *COLUMNS[1:]]
    body = [
        [r["task"], f"{r['context_tokens']:,}", r["episodes"], f"{r[COLUMNS[0]]:.3f}",
         f"{ci95(r[COLUMNS[0]], r['episodes']):.3f}", *(f"{r[c]:.3f}" for c in COLUMNS[1:])]
        for r in rows
    ]
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder with <task>/best models")
    parser.add_argument("--tasks", nargs="+", default=["qa1", "qa2", "qa3"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000, 4_000, 32_000, 128_000])
    parser.add_argument("--episodes", type=int, nargs="+", default=[200],
                        help="episodes per length (one value, or one per length)")
    parser.add_argument("--shortlist", type=int, help="certified shortlist size for long documents")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="qrag_lengths")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    episodes = args.episodes * len(args.lengths) if len(args.episodes) == 1 else args.episodes
    if len(episodes) != len(args.lengths):
        raise SystemExit(f"--episodes takes one value or {len(args.lengths)} (one per length)")
    rows: list[dict] = []
    for task in args.tasks:
        for tokens, count in zip(args.lengths, episodes):
            rows += evaluate_lengths(args.runs / task / "best", task, [tokens], count, shortlist=args.shortlist)
            write_json(RESULTS_DIR / f"{args.name}.json", rows)
            write_atomic(RESULTS_DIR / f"{args.name}.md", "# Q-RAG on BABILong (validation stories, held-out books)\n\n"
                         "success@k / success@T / fact F1 after the Q-threshold stop (0.5) / facts kept / "
                         "exact-reader answer accuracy on the kept facts.\n\n" + lengths_table(rows))
            print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
