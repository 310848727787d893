"""How the cost of one Q-RAG episode grows from 1K to 10M tokens: build, encode, step, memory.

Each length runs in its own process (so ``ru_maxrss`` is that length's peak memory) and measures,
in order:

1. ``end_to_end_s``: one evaluation episode of ``QRAGAgent(shortlist=k)`` (``run_episode``) from a fresh reset with the warm disk
   cache and an empty memory cache: build + encode + every greedy step (6), what a user waits for.
2. ``build_s``: ``env.reset`` (median of ``--repeats``).
3. ``encode_warm_s``: every chunk through the network's chunk side with the disk cache warm
   (a new embedder, so its memory cache is empty); ``cache_load_s`` is reading the disk cache once.
4. ``encode_cold_s``: the document's distinct texts encoded into a fresh temporary cache folder.
   Above ``--cold-max-tokens`` it is *extrapolated* from the throughput on a sample of its texts
   (flagged ``cold_extrapolated``), because encoding the 19K-44K distinct sentences of a 1M-10M-token document cold takes 6-15 minutes or more here.
5. per-step time of the exact full scan (rotate every chunk) and of the faiss shortlist, on the
   same states (the full scan's greedy trajectory), with the number of steps where they agree.

    python -m qrag_benchmarks.cost_curve                       # all lengths, writes results/cost_curve.*
    python -m qrag_benchmarks.cost_curve --tokens 1000 32000   # a subset
    python -m qrag_benchmarks.cost_curve --threads 2 --name cost_curve_2threads
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import gymnasium as gym
import numpy as np
import torch

import qrag_gym  # noqa: F401  (registers the envs)
from qrag_agents.qrag.config import cpu_config
from qrag_agents.qrag.agent import QRAGAgent
from qrag_agents.qrag.inference import embed_document, shortlist_step, step_q_values
from qrag_agents.qrag.networks import QNetwork
from qrag_benchmarks.results_io import BENCHMARK_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_gym.atomic import atomic_write
from qrag_gym.embedding import TextEmbedder
from qrag_gym.evaluation import run_episode
from qrag_agents.qrag.shortlist import ChunkIndex

LENGTHS = (1_000, 32_000, 128_000, 1_000_000, 10_000_000)
COLD_SAMPLE = 512


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def measure(tokens: int, args: argparse.Namespace) -> dict:
    """Every figure for one length, in this process."""
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    env, source_s = _timed(lambda: gym.make("QRAG-Babilong-v0", task=args.task, context_tokens=tokens,
                                              source="real", never_terminate=True))  # always max_steps steps
    base = env.unwrapped
    embedder, cache_load_s = _timed(TextEmbedder)
    network = QNetwork(cpu_config(), embedder).eval()
    agent = QRAGAgent(network=network, shortlist=args.k)
    episode, end_to_end_s = _timed(lambda: run_episode(agent, env, args.seed, args.task))
    builds = [_timed(lambda: base.reset(seed=args.seed + i))[1] for i in range(args.repeats)]
    base.reset(seed=args.seed)
    chunks_text = base.chunks
    fresh = TextEmbedder()
    network_fresh = QNetwork(cpu_config(), fresh).eval()
    vectors, encode_warm_s = _timed(lambda: embed_document(network_fresh, chunks_text))
    distinct = list(dict.fromkeys(chunks_text))
    with tempfile.TemporaryDirectory() as folder:
        cold = TextEmbedder(cache_dir=folder)
        extrapolated = tokens > args.cold_max_tokens
        sample = distinct[:: max(1, len(distinct) // COLD_SAMPLE)][:COLD_SAMPLE] if extrapolated else distinct
        _, cold_s = _timed(lambda: (cold.encode(sample), cold.disk.flush()))
        encode_cold_s = cold_s * len(distinct) / len(sample)
    index, index_s = _timed(lambda: ChunkIndex(vectors.numpy()))
    selected: list[int] = []
    mask = np.ones(len(chunks_text), dtype=bool)
    full, short, agree = [], [], 0
    for _ in range(base.max_steps):
        q, seconds = _timed(lambda: step_q_values(network, vectors, base.question, chunks_text, selected, mask))
        full.append(seconds)
        found, seconds = _timed(lambda: shortlist_step(network, index, vectors, base.question, chunks_text, selected, mask, args.k))
        short.append(seconds)
        action = int(q.argmax())
        agree += found.action == action
        selected.append(action)
        mask[action] = False
    return {
        "tokens": tokens, "measured_tokens": base.episode.num_tokens, "chunks": len(chunks_text),
        "distinct_texts": len(distinct), "source_load_s": source_s, "cache_load_s": cache_load_s,
        "end_to_end_s": end_to_end_s, "end_to_end_steps": len(episode["selected"]),
        "build_s": statistics.median(builds), "encode_warm_s": encode_warm_s,
        "encode_cold_s": encode_cold_s, "cold_extrapolated": extrapolated, "cold_sample": len(sample),
        "index_s": index_s, "step_full_s": statistics.median(full), "step_shortlist_s": statistics.median(short),
        "steps_agree": agree, "steps": len(full), "peak_rss_gib": _peak_rss_gib(),
    }


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def report(rows: list[dict], args: argparse.Namespace) -> str:
    header = ["tokens", "chunks", "build", "encode warm", "encode cold", "step: full scan", "step: shortlist",
              "ratio", "agree", "end to end (warm, shortlist)", "peak RSS"]
    table = []
    for row in rows:
        cold = _seconds(row["encode_cold_s"]) + (f" (extrapolated from {row['cold_sample']})" if row["cold_extrapolated"] else "")
        table.append([f"{row['measured_tokens']:,}", f"{row['chunks']:,}", _seconds(row["build_s"]), _seconds(row["encode_warm_s"]),
                      cold, _seconds(row["step_full_s"]), _seconds(row["step_shortlist_s"]),
                      f"{row['step_full_s'] / row['step_shortlist_s']:.1f}x", f"{row['steps_agree']}/{row['steps']}",
                      _seconds(row["end_to_end_s"]), f"{row['peak_rss_gib']:.2f} GiB"])
    load = os.getloadavg()[0]
    return (f"# Cost of one Q-RAG episode vs context length (QRAG-Babilong-v0 {args.task}, real data, untrained cpu_config network)\n\n"
            f"{args.threads} torch/faiss threads on a 2-core AMD EPYC **shared with other training runs** (load average "
            f"{load:.1f} at the end): absolute times are inflated and noisy; ratios within one row come from one process. "
            f"Step times are medians over {rows[0]['steps']} greedy steps, build the median of {args.repeats} resets. Shortlist: "
            f"k = {args.k} per position bucket, certified exact (see agents/qrag/shortlist.py). \"encode cold\" above "
            f"{args.cold_max_tokens:,} tokens is extrapolated from the measured cold throughput on a sample of that document's "
            "distinct texts, not measured end to end. End to end = reset + encode (warm disk cache) + 6 greedy steps with "
            "the shortlist, in a fresh process; the one-off disk-cache load and corpus load per process are not in it "
            "(in the JSON).\n\n" + markdown_table(header, table))


def plot(rows: list[dict], threads: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [row["measured_tokens"] for row in rows]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in [("build_s", "build episode"), ("encode_warm_s", "encode (warm cache)"),
                       ("encode_cold_s", "encode (cold cache)"), ("step_full_s", "one step: full scan"),
                       ("step_shortlist_s", "one step: faiss shortlist"), ("end_to_end_s", "episode end to end (warm)")]:
        times.plot(tokens, [row[key] for row in rows], marker="o", label=label)
    extrapolated = [row for row in rows if row["cold_extrapolated"]]
    times.scatter([r["measured_tokens"] for r in extrapolated], [r["encode_cold_s"] for r in extrapolated],
                  facecolors="none", edgecolors="k", s=90, label="cold: extrapolated", zorder=3)
    times.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="seconds", title=f"time ({threads} thread(s) on 2 shared CPU cores)")
    times.legend(fontsize=7)
    memory.plot(tokens, [row["peak_rss_gib"] for row in rows], marker="o")
    memory.set(xscale="log", xlabel="context tokens", ylabel="GiB", title="peak RSS per process", ylim=(0, None))
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, BENCHMARK_RESULTS)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--task", default="qa2")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold-max-tokens", type=int, default=128_000)
    parser.add_argument("--name", default="cost_curve", help="stem of the files written into --out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    claim_outputs(parser, args, f"{args.name}.json", f"{args.name}.md", f"{args.name}.png")
    if args.worker:
        print(json.dumps(measure(args.tokens[0], args)))
        return
    rows = []
    for tokens in args.tokens:
        command = [sys.executable, "-m", "qrag_benchmarks.cost_curve", "--worker", "--tokens", str(tokens), "--task", args.task,
                   "--k", str(args.k), "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--seed", str(args.seed), "--cold-max-tokens", str(args.cold_max_tokens)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the {tokens}-token run failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    write_json(args.out / f"{args.name}.json", {"args": vars(args), "load_average": os.getloadavg(), "rows": rows})
    write_atomic(args.out / f"{args.name}.md", report(rows, args))
    plot(rows, args.threads, args.out / f"{args.name}.png")
    print(report(rows, args))


if __name__ == "__main__":
    main()
