"""How fast the frozen encoder runs on this CPU in fp32, bf16 autocast and int8, and what int8 costs in retrieval.

int8 is ``torch.ao.quantization.quantize_dynamic`` on every Linear layer, applied here only: it is
not a TextEmbedder option because on this CPU it measured no faster than fp32 while moving vectors
(mean cosine 0.93 to fp32) and top-1 dense retrieval (70% agreement) noticeably.

Speed: sentences/s of ``TextEmbedder.encode_uncached`` on real book sentences, configurations
interleaved round by round so that load from other processes hits them alike (medians reported).
Quality: cosine between each variant's vector and the fp32 vector of the same sentence, and dense
retrieval agreement on real BABILong episodes (top-1 chunk for the question, top-5 overlap, and
recall@5 of the supporting facts), fp32 vs the variant.

    python -m qrag_benchmarks.studies.encoder_speed --sentences 512 --rounds 3 --episodes 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import qrag_gym  # noqa: F401  (registers the envs)
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_gym.data.noise import load_book_corpus
from qrag_gym.data.paths import require_data_subdir
from qrag_gym.embedding import TextEmbedder

VARIANTS = {  # name -> (TextEmbedder kwargs plus "int8", threads)
    "fp32, 1 thread": ({}, 1),
    "fp32, 2 threads": ({}, 2),
    "bf16 autocast, 1 thread": ({"bf16": True}, 1),
    "int8 dynamic, 1 thread": ({"int8": True}, 1),
    "int8 dynamic, 2 threads": ({"int8": True}, 2),
}


def make_embedder(int8: bool = False, **kwargs) -> TextEmbedder:
    """A TextEmbedder without disk cache, its encoder's Linear layers quantised to int8 if asked."""
    embedder = TextEmbedder(**kwargs, disk_cache=False)
    if int8:
        embedder.model = torch.ao.quantization.quantize_dynamic(embedder.model, {torch.nn.Linear}, dtype=torch.qint8)
    return embedder


def throughput(embedder: TextEmbedder, texts: list[str], threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    embedder.encode_uncached(texts)
    return len(texts) / (time.perf_counter() - start)


def dense_agreement(reference: TextEmbedder, variant: TextEmbedder, episodes: int, tokens: int) -> dict[str, float]:
    """Question-to-chunk dense retrieval with both embedders on the same real episodes."""
    top1, overlap, recall_ref, recall_var = [], [], [], []
    for index in range(episodes):
        env = gym.make("QRAG-Babilong-v0", task=f"qa{1 + index % 3}", context_tokens=tokens, source="real")
        env.reset(seed=index)
        base = env.unwrapped
        rankings = []
        for embedder in (reference, variant):
            scores = embedder.encode(list(base.chunks)) @ embedder.encode([base.question], persist=False)[0]
            rankings.append(np.argsort(-scores)[:5])
        support = set(base.episode.supporting_ids)
        top1.append(rankings[0][0] == rankings[1][0])
        overlap.append(len(set(rankings[0]) & set(rankings[1])) / 5)
        recall_ref.append(len(support & set(rankings[0])) / len(support))
        recall_var.append(len(support & set(rankings[1])) / len(support))
    return {"top1_agreement": float(np.mean(top1)), "top5_overlap": float(np.mean(overlap)),
            "recall5_fp32": float(np.mean(recall_ref)), "recall5_variant": float(np.mean(recall_var))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=1000)
    args = parser.parse_args()
    claim_outputs(parser, args, "encoder_speed.json", "encoder_speed.md")
    corpus = load_book_corpus(require_data_subdir("noise/gutenberg"), "all").sentences
    rng = np.random.default_rng(0)
    texts = [corpus[i] for i in rng.choice(len(corpus), args.sentences, replace=False)]
    embedders = {name: make_embedder(**kwargs) for name, (kwargs, _) in VARIANTS.items()}
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name, embedder in embedders.items():  # warm-up: first calls allocate and pick kernels
        throughput(embedder, texts[:64], VARIANTS[name][1])
    for round_index in range(args.rounds):
        for name, embedder in embedders.items():
            speeds[name].append(throughput(embedder, texts, VARIANTS[name][1]))
            print(f"round {round_index} {name}: {speeds[name][-1]:.1f} sentences/s", flush=True)
    torch.set_num_threads(1)
    reference = embedders["fp32, 1 thread"].encode_uncached(texts)
    rows, results = [], {}
    fp32_speed = statistics.median(speeds["fp32, 1 thread"])
    warm_fp32 = TextEmbedder()  # the disk cache holds fp32 vectors of every book sentence and fact
    for name, embedder in embedders.items():
        cosine = (embedder.encode_uncached(texts) * reference).sum(1)
        entry = {"sentences_per_s": statistics.median(speeds[name]), "runs": speeds[name],
                 "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}
        if name.startswith("int8") and "2 threads" not in name:
            entry.update(dense_agreement(warm_fp32, make_embedder(int8=True), args.episodes, args.tokens))
        results[name] = entry
        rows.append([name, f"{entry['sentences_per_s']:.1f}", f"{entry['sentences_per_s'] / fp32_speed:.2f}x",
                     f"{entry['cosine_mean']:.5f} / {entry['cosine_min']:.5f}"])
    meta = {"sentences": args.sentences, "rounds": args.rounds, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "load_average": os.getloadavg()}
    write_json(args.out / "encoder_speed.json", {"meta": meta, "variants": results})
    int8 = results["int8 dynamic, 1 thread"]
    text = (f"# Encoder speed on this CPU ({args.sentences} real book sentences, median of {args.rounds} interleaved rounds)\n\n"
            f"Measured under contention (other training runs on the same 2 cores; load average {meta['load_average'][0]:.1f}): "
            "absolute rates are low, ratios within one run are the figure to read.\n\n"
            + markdown_table(["variant", "sentences/s", "vs fp32 1 thread", "cosine to fp32 (mean / min)"], rows)
            + f"\nint8 dense retrieval on {args.episodes} real BABILong episodes of {args.tokens} tokens (qa1-qa3): "
            f"top-1 agreement with fp32 {int8['top1_agreement']:.3f}, top-5 overlap {int8['top5_overlap']:.3f}, "
            f"support recall@5 {int8['recall5_variant']:.3f} vs {int8['recall5_fp32']:.3f} in fp32.\n")
    write_atomic(args.out / "encoder_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
