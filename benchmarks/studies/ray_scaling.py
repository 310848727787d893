"""Ray against the plain path on this machine, and what that projects to on N nodes (issue 18).

Two jobs, each timed on the plain single-process path and on a local Ray instance with 1 and with
2 workers:

- embedding ``--sentences`` distinct real book sentences (the work of ``qrag-cache warm``): plain is
  ``TextEmbedder.encode_uncached`` over the length-sorted texts in warm's blocks (1 and 2 torch
  threads); Ray is :func:`qrag_gym.integrations.ray_embedding.embed_on_ray` with 1 and 2 actors (1
  thread each) on a 2-CPU instance started once beforehand (its start is reported apart). Each wall
  time includes loading the encoder (per actor on Ray). The configurations run interleaved for
  ``--rounds`` rounds and the fastest round of each is reported (the 2 cores are shared with other
  jobs, which only ever add time). Every path's vectors are compared with the plain 1-thread ones.
- a 12-cell grid (3 agents x qa1, qa2 x 4K, 32K, seed 0, ``--episodes`` each) as a user runs it: a
  fresh ``qrag-bench --threads 1`` process, plain or with ``--ray --ray-workers 1`` / ``2`` (which start
  their own local Ray instance of 1 or 2 CPUs), timed end to end, start-up included. An untimed plain
  run first fills a private embedding cache, so every timed run evaluates with the same warm cache.

  A 1-cell run (plain and Ray 1 worker, 1 episode) measures the fixed start-up of such a process.

Projections (on paper, for dedicated cores; this machine's 2 cores are shared with other jobs):
embedding at the 1-worker Ray rate times the workers times the measured 2-worker efficiency; the
grid at one start-up plus the 1-worker Ray time per cell (start-up taken off) over the workers.

    python -m qrag_benchmarks.studies.ray_scaling --sentences 5000 --episodes 20 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qrag_benchmarks.report import load_records
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_gym.cache_cli import WARM_BATCH
from qrag_gym.data.noise import load_book_corpus
from qrag_gym.data.paths import require_data_subdir
from qrag_gym.embedding import TextEmbedder
from qrag_gym.models import count_tokens
from qrag_gym.integrations.ray_cluster import init_ray
from qrag_gym.integrations.ray_embedding import embed_on_ray

GRID = ["--agents", "random", "bm25-multistep", "dense-multistep", "--tasks", "qa1", "qa2", "--lengths", "4K", "32K",
        "--seeds", "0", "--threads", "1"]
ONE_CELL = ["--agents", "random", "--tasks", "qa1", "--lengths", "4K", "--seeds", "0", "--threads", "1"]
"""One cheap cell (1 episode): its wall time is a process's (and a Ray worker's) fixed start-up cost."""
FRESH_TOKENS = 10_000_000
GRID_CELLS = 1_000
NODES = (1, 4, 16)
WORKERS_PER_NODE = 16


def sample_sentences(data_dir: str | None, count: int) -> list[str]:
    """``count`` distinct real book sentences, drawn with a fixed seed from every book of the data folder."""
    corpus = sorted(set(load_book_corpus(require_data_subdir("noise/gutenberg", data_dir), "all").sentences))
    if count > len(corpus):
        raise ValueError(f"--sentences {count}: the books hold only {len(corpus)} distinct sentences")
    picks = np.random.default_rng(0).choice(len(corpus), size=count, replace=False)
    return [corpus[i] for i in sorted(picks)]


def embed_plain(texts: list[str], threads: int) -> tuple[float, dict[str, np.ndarray]]:
    """Wall time (encoder load included) and vectors of the plain path, in warm's length-sorted blocks."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    embedder = TextEmbedder(None, disk_cache=False)
    ordered = sorted(texts, key=len)
    vectors = {}
    for block in range(0, len(ordered), WARM_BATCH):
        chunk = ordered[block : block + WARM_BATCH]
        vectors.update(zip(chunk, embedder.encode_uncached(chunk)))
    return time.perf_counter() - start, vectors


def embed_ray(texts: list[str], workers: int) -> tuple[float, dict[str, np.ndarray]]:
    """Wall time (actor start and encoder load included) and vectors of the Ray Data path."""
    embedder = TextEmbedder(None, disk_cache=False)
    vectors: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    embed_on_ray(embedder, texts, workers, on_vectors=lambda block, v: vectors.update(zip(block, v)))
    return time.perf_counter() - start, vectors


def run_grid(out: Path, episodes: int, extra: list[str], grid: list[str] = GRID) -> float:
    """Wall time of one fresh ``qrag-bench`` process over ``grid`` (its start-up included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qrag_benchmarks.run", *grid, "--episodes", str(episodes), "--out", str(out),
                    *extra], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def comparable(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in load_records(folder)]


def project(rate_per_worker: float, efficiency: float, work: float) -> dict[str, float]:
    """Seconds for ``work`` units on N nodes of :data:`WORKERS_PER_NODE` workers each."""
    return {f"{n} node(s) x {WORKERS_PER_NODE} workers": work / (rate_per_worker * n * WORKERS_PER_NODE * efficiency)
            for n in NODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=5_000)
    parser.add_argument("--episodes", type=int, default=20, help="episodes per grid cell")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the embedding timings")
    parser.add_argument("--data-dir", default=None)
    add_out_argument(parser, STUDY_RESULTS)
    args = parser.parse_args()
    claim_outputs(parser, args, "ray_scaling.json", "ray_scaling.md")
    if min(args.sentences, args.episodes, args.rounds) < 1:
        parser.error("--sentences, --episodes and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as scratch:
        scratch_dir = Path(scratch)
        os.environ["QRAG_CACHE_DIR"] = str(scratch_dir / "cache")  # before Ray starts: its workers inherit it
        if args.data_dir:
            os.environ["QRAG_DATA_DIR"] = str(Path(args.data_dir).resolve())
        texts = sample_sentences(args.data_dir, args.sentences)

        grid: dict[str, float] = {}
        run_grid(scratch_dir / "warm-up", args.episodes, [])
        grid["plain"] = run_grid(scratch_dir / "plain", args.episodes, [])
        grid["Ray, 1 worker"] = run_grid(scratch_dir / "ray1", args.episodes, ["--ray", "--ray-workers", "1"])
        grid["Ray, 2 workers"] = run_grid(scratch_dir / "ray2", args.episodes, ["--ray", "--ray-workers", "2"])
        same_records = {name: comparable(scratch_dir / folder) == comparable(scratch_dir / "plain")
                        for name, folder in (("Ray, 1 worker", "ray1"), ("Ray, 2 workers", "ray2"))}
        cells = len({(r["agent"], r["task"], r["length"], r["seed"]) for r in load_records(scratch_dir / "plain")})
        startup = {"plain": run_grid(scratch_dir / "one-plain", 1, [], ONE_CELL),
                   "Ray, 1 worker": run_grid(scratch_dir / "one-ray1", 1, ["--ray", "--ray-workers", "1"], ONE_CELL)}

        start = time.perf_counter()
        ray = init_ray("local", num_cpus=2)
        ray_start = time.perf_counter() - start
        rounds: dict[str, list[float]] = {}
        vectors: dict[str, dict[str, np.ndarray]] = {}
        for _ in range(args.rounds):
            for name, run in (("plain, 1 thread", lambda: embed_plain(texts, 1)),
                              ("Ray, 1 worker", lambda: embed_ray(texts, 1)),
                              ("Ray, 2 workers", lambda: embed_ray(texts, 2)),
                              ("plain, 2 threads", lambda: embed_plain(texts, 2))):
                seconds, vectors[name] = run()
                torch.set_num_threads(1)
                rounds.setdefault(name, []).append(seconds)
        embedding = {name: min(times) for name, times in rounds.items()}
        reference = vectors["plain, 1 thread"]
        identical = {name: all(np.array_equal(reference[t], found[t]) for t in texts)
                     for name, found in vectors.items() if name != "plain, 1 thread"}
        ray.shutdown()

    tokenizer = TextEmbedder(None, disk_cache=False).tokenizer
    tokens_per_sentence = float(np.mean(np.minimum(count_tokens(tokenizer, texts), 64)))
    fresh_sentences = FRESH_TOKENS / tokens_per_sentence
    plain_seconds = min(embedding["plain, 1 thread"], embedding["plain, 2 threads"])  # the faster plain setting
    embed_rate = args.sentences / embedding["Ray, 1 worker"]
    embed_efficiency = embedding["Ray, 1 worker"] / embedding["Ray, 2 workers"] / 2
    cell_seconds = (grid["Ray, 1 worker"] - startup["Ray, 1 worker"]) / cells  # one worker's time per cell, start-up apart
    cell_rate = 1 / cell_seconds
    result = {
        "command": (f"python -m qrag_benchmarks.studies.ray_scaling --sentences {args.sentences} --episodes {args.episodes} "
                    f"--rounds {args.rounds}"),
        "machine": f"{os.cpu_count()} CPUs shared with other jobs; load average at the end "
                   f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "ray_start_seconds": round(ray_start, 1),
        "embedding": {"sentences": args.sentences, "wall_seconds": {k: round(v, 1) for k, v in embedding.items()},
                      "every_round_seconds": {k: [round(t, 1) for t in v] for k, v in rounds.items()},
                      "ratio_to_plain_1_thread": {k: round(embedding["plain, 1 thread"] / v, 2) for k, v in embedding.items()},
                      "ray_2_over_1_workers": round(embedding["Ray, 1 worker"] / embedding["Ray, 2 workers"], 2),
                      "bit_identical_to_plain_1_thread": identical},
        "grid": {"cells": cells, "episodes_per_cell": args.episodes, "arguments": " ".join(GRID),
                 "wall_seconds": {k: round(v, 1) for k, v in grid.items()},
                 "ratio_to_plain": {k: round(grid["plain"] / v, 2) for k, v in grid.items()},
                 "ray_2_over_1_workers": round(grid["Ray, 1 worker"] / grid["Ray, 2 workers"], 2),
                 "records_identical_to_plain": same_records},
        "projection": {
            "assumptions": (f"embedding: the Ray 1-worker run's rate (actor start included) times workers times the "
                            f"measured 2-worker efficiency; grid: the start-up of a 1-cell Ray run once, plus the Ray "
                            f"1-worker run's time per cell (its start-up taken off) divided by the workers, cells being "
                            f"independent tasks (the 2-worker grid run here could not show that: 2 cores shared with "
                            f"other jobs, and each worker's start-up is most of a 12-cell run); {WORKERS_PER_NODE} CPU "
                            f"workers per node; a fresh {FRESH_TOKENS:,}-token haystack is "
                            f"{fresh_sentences:,.0f} new sentences at the sample's {tokens_per_sentence:.1f} tokens each "
                            f"(capped at 64); a {GRID_CELLS:,}-cell grid has this grid's mix of cells"),
            "embedding_sentences_per_second_per_worker": round(embed_rate, 1),
            "embedding_efficiency_2_workers": round(embed_efficiency, 2),
            "fresh_10M_haystack_seconds": {"plain, 1 process": round(fresh_sentences / args.sentences * plain_seconds, 0),
                                          **{k: round(v, 0) for k, v in project(embed_rate, embed_efficiency, fresh_sentences).items()}},
            "startup_seconds_one_cell_run": {k: round(v, 1) for k, v in startup.items()},
            "cell_seconds_per_worker": round(cell_seconds, 2),
            "grid_1000_cells_seconds": {
                "plain, 1 process": round(startup["plain"] + GRID_CELLS * (grid["plain"] - startup["plain"]) / cells, 0),
                **{k: round(startup["Ray, 1 worker"] + v, 0) for k, v in project(cell_rate, 1.0, GRID_CELLS).items()}},
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ray_scaling.json", result)
    write_atomic(args.out / "ray_scaling.md", markdown(result).encode())
    print(markdown(result))


def markdown(result: dict) -> str:
    e, g, p = result["embedding"], result["grid"], result["projection"]
    lines = ["# Ray against the plain path (issue 18)", "", f"`{result['command']}`; {result['machine']}; "
             f"the embedding's local Ray instance (2 CPUs) started once in {result['ray_start_seconds']} s (not in its times; "
             "the grid's times include everything).", "",
             f"## Embedding {e['sentences']:,} real book sentences", "",
             "Fastest of the interleaved rounds (every round: " + "; ".join(f"{k} {v}" for k, v in e["every_round_seconds"].items())
             + ").", "",
             markdown_table(["path", "wall s", "speed-up over plain, 1 thread", "vectors bit-identical to plain, 1 thread"],
                            [[k, v, e["ratio_to_plain_1_thread"][k], e["bit_identical_to_plain_1_thread"].get(k, "reference")]
                             for k, v in e["wall_seconds"].items()]),
             f"Ray 2 workers over 1 worker: {e['ray_2_over_1_workers']}x.", "",
             f"## A {g['cells']}-cell benchmark grid ({g['episodes_per_cell']} episodes a cell, `qrag-bench {g['arguments']}`)", "",
             "One fresh process each, start-up (and for Ray the instance's start) included, warm embedding cache.", "",
             markdown_table(["path", "wall s", "speed-up over plain", "records identical to plain"],
                            [[k, v, g["ratio_to_plain"][k], g["records_identical_to_plain"].get(k, "reference")]
                             for k, v in g["wall_seconds"].items()]),
             f"Ray 2 workers over 1 worker: {g['ray_2_over_1_workers']}x.", "",
             "## On paper: N nodes", "", p["assumptions"] + ".", "",
             f"Embedding: {p['embedding_sentences_per_second_per_worker']} sentences/s per worker, 2-worker efficiency "
             f"{p['embedding_efficiency_2_workers']}; grid: {p['cell_seconds_per_worker']} s per cell on one worker, "
             "start-up of a 1-cell run " + ", ".join(f"{k} {v} s" for k, v in p["startup_seconds_one_cell_run"].items())
             + ".", "",
             markdown_table(["where", "fresh 10M-token haystack (min)", "1,000-cell grid (min)"],
                            [[k, round(p["fresh_10M_haystack_seconds"][k] / 60, 1), round(p["grid_1000_cells_seconds"][k] / 60, 1)]
                             for k in p["fresh_10M_haystack_seconds"]])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
