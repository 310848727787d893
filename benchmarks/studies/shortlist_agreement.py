"""Does the faiss shortlist choose the same chunk as the exact full scan? Counted step by step on real episodes.

Each episode follows the full scan's greedy trajectory for ``max_steps`` steps; at every state the
shortlist's action (and its Q value) is compared with the full scan's. Scorers: an untrained Q-RAG
network from :func:`cpu_config` and a randomly perturbed one (adapters no longer the identity), each
with continuous and with integer positions, and the dense baseline's plain inner product.

    python -m qrag_benchmarks.studies.shortlist_agreement --tokens 128000 1000000 --episodes 3
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import qrag_gym  # noqa: F401  (registers the envs)
from qrag_agents.qrag.config import cpu_config
from qrag_agents.qrag.inference import embed_document, shortlist_step, step_q_values
from qrag_agents.qrag.networks import QNetwork
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_gym.embedding import TextEmbedder
from qrag_agents.qrag.shortlist import ChunkIndex, certified_argmax


def networks(embedder: TextEmbedder) -> dict[str, QNetwork]:
    """Untrained and perturbed Q networks, each with continuous and integer positions."""
    out = {}
    for integer in (False, True):
        suffix = "integer positions" if integer else "continuous positions"
        out[f"Q-RAG untrained, {suffix}"] = QNetwork(cpu_config(integer_positions=integer), embedder).eval()
        perturbed = QNetwork(cpu_config(integer_positions=integer), embedder).eval()
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter in perturbed.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        out[f"Q-RAG perturbed, {suffix}"] = perturbed
    return out


def compare_qrag(network: QNetwork, env: gym.Env, k: int, steps: int) -> list[dict]:
    base = env.unwrapped
    chunks = embed_document(network, base.chunks)
    index = ChunkIndex(chunks.numpy())
    selected: list[int] = []
    rows = []
    mask = np.ones(base.num_chunks, dtype=bool)
    for _ in range(steps):
        start = time.perf_counter()
        q = step_q_values(network, chunks, base.question, base.chunks, selected, mask)
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        found = shortlist_step(network, index, chunks, base.question, base.chunks, selected, mask, k)
        short_s = time.perf_counter() - start
        action = int(q.argmax())
        rows.append({"agree": found.action == action, "q_diff": abs(found.value - float(q[action])),
                     "rescored": found.shortlisted + found.fallback, "fallback": found.fallback,
                     "full_s": full_s, "shortlist_s": short_s})
        selected.append(action)
        mask[action] = False
    return rows


def compare_dense(embedder: TextEmbedder, env: gym.Env, k: int, steps: int) -> list[dict]:
    """Dense multi-step retrieval (query = question + selected facts), full product vs shortlist."""
    base = env.unwrapped
    vectors = base.chunk_vectors()
    index = ChunkIndex(vectors)
    selected: list[int] = []
    mask = np.ones(base.num_chunks, dtype=bool)
    rows = []
    for _ in range(steps):
        query = embedder.encode([base.question], persist=False)[0] + vectors[selected].sum(0)
        scores = np.where(mask, vectors @ query, -np.inf)
        found = certified_argmax(index, query[None], np.zeros(1) + 1e-4, np.zeros(1, dtype=np.int64), mask, k,
                                 lambda ids: vectors[ids] @ query)
        action = int(np.argmax(scores))
        rows.append({"agree": found.action == action, "q_diff": abs(found.value - float(scores[action])),
                     "rescored": found.shortlisted + found.fallback, "fallback": found.fallback,
                     "full_s": 0.0, "shortlist_s": 0.0})
        selected.append(action)
        mask[action] = False
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128_000, 1_000_000])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    claim_outputs(parser, args, "shortlist_agreement.json", "shortlist_agreement.md")
    torch.set_num_threads(args.threads)
    embedder = TextEmbedder()
    nets = networks(embedder)
    results: dict[str, list[dict]] = {name: [] for name in [*nets, "dense multi-step (inner product)"]}
    for tokens in args.tokens:
        for episode in range(args.episodes):
            env = gym.make("QRAG-Babilong-v0", task=f"qa{1 + episode % 3}", context_tokens=tokens, source="real", embedder=embedder)
            env.reset(seed=episode)
            for name, network in nets.items():
                rows = compare_qrag(network, env, args.k, args.steps)
                results[name] += [{**row, "tokens": tokens} for row in rows]
            rows = compare_dense(embedder, env, args.k, args.steps)
            results["dense multi-step (inner product)"] += [{**row, "tokens": tokens} for row in rows]
            print(f"{tokens} tokens, episode {episode}: " + ", ".join(
                f"{name}: {np.mean([r['agree'] for r in rows_all if r['tokens'] == tokens]):.3f}"
                for name, rows_all in results.items()), flush=True)
    table, summary = [], {}
    for name, rows in results.items():
        for tokens in args.tokens:
            mine = [r for r in rows if r["tokens"] == tokens]
            entry = {"steps": len(mine), "agreement": float(np.mean([r["agree"] for r in mine])),
                     "max_q_diff": float(max(r["q_diff"] for r in mine)),
                     "median_rescored": float(np.median([r["rescored"] for r in mine])),
                     "median_fallback": float(np.median([r["fallback"] for r in mine])),
                     "median_full_s": float(np.median([r["full_s"] for r in mine])),
                     "median_shortlist_s": float(np.median([r["shortlist_s"] for r in mine]))}
            summary[f"{name} @ {tokens}"] = entry
            speed = (f"{entry['median_full_s'] / entry['median_shortlist_s']:.1f}x" if entry["median_shortlist_s"] else "-")
            table.append([name, f"{tokens:,}", entry["steps"], f"{entry['agreement']:.3f}", f"{entry['max_q_diff']:.1e}",
                          int(entry["median_rescored"]), int(entry["median_fallback"]), speed])
    total = [r["agree"] for rows in results.values() for r in rows]
    write_json(args.out / "shortlist_agreement.json", {"k": args.k, "overall": float(np.mean(total)), "rows": summary})
    text = (f"# Shortlist vs exact full scan (k = {args.k} per position bucket, real BABILong episodes, qa1-qa3)\n\n"
            f"Overall agreement of the chosen chunk: **{np.mean(total):.4f}** over {len(total)} steps.\n\n"
            + markdown_table(["scorer", "tokens", "steps", "same action", "max |dQ|", "median re-scored chunks",
                              "median fallback chunks", "step speed-up"], table))
    write_atomic(args.out / "shortlist_agreement.md", text)
    print(text)


if __name__ == "__main__":
    main()
