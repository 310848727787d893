"""Would sentence-transformers serve as the package's encoder? (issue 15, item 8)

``TextEmbedder`` encodes with its own ~25 lines (tokenize with a token cap, forward, mean pool,
normalise, length-sorted batches) around which the id-keyed feature tables and the text caches sit.
``SentenceTransformer.encode`` does the same job in a maintained library. This study encodes the same
real book sentences both ways and reports what a switch would change:

- the vectors: bit-identical share, largest absolute difference, lowest cosine (any change in the last
  bits would have to be a new encoder fingerprint, since every cached table would otherwise mix two kinds);
- dense retrieval on real BABILong episodes: top-1 agreement of question-to-chunk retrieval;
- speed: sentences/s, the two interleaved round by round in one process (medians).

    python -m qrag_benchmarks.studies.sentence_transformers_encoding --sentences 2000 --rounds 5 --episodes 50
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
from qrag_gym.models import resolve_model


NOTES = """Reading: the library gives the same vectors (half the rows differ in the last bits, from its other
batch order and padding) at the same speed, and its ``max_seq_length`` cuts at the same 64 tokens. Not adopted,
because it would replace about 25 lines (``TextEmbedder._forward`` and ``encode_uncached``) with about as many:
- a model that ships its own sentence-transformers modules gets them (CLS pooling, no normalisation, extra
  dense layers) instead of the mean pooling the method's encoders use by contract (the full fine-tune build too),
  so the package would have to build the modules itself (transformer, mean pooling, normalisation);
- the caching, the id-keyed feature tables and the batching by length stay the package's either way;
- the changed last bits need a new encoder fingerprint: every cached table is encoded again (the 53,485 book
  sentences take about 5 minutes on 2 cores) and committed records reproduce only to within near-ties.
"""


def library_encoder(max_length: int, batch_size: int):
    """The default model through sentence-transformers, with the package's token cap and batch size."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(None), device="cpu")
    model.max_seq_length = max_length

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)

    return encode


def timed(encode, texts: list[str]) -> float:
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def retrieval_agreement(ours, theirs, episodes: int, tokens: int) -> dict[str, float]:
    """Question-to-chunk dense retrieval with both encoders on the same real episodes (qa1-qa3)."""
    top1, recall_ours, recall_theirs = [], [], []
    for index in range(episodes):
        env = gym.make("QRAG-Babilong-v0", task=f"qa{1 + index % 3}", context_tokens=tokens, source="real",
                       split="validation")
        env.reset(seed=index)
        base = env.unwrapped
        support = set(base.episode.supporting_ids)
        tops = []
        for encode in (ours, theirs):
            vectors = encode(list(base.chunks) + [base.question])
            tops.append(np.argsort(-(vectors[:-1] @ vectors[-1]))[:5])
        top1.append(tops[0][0] == tops[1][0])
        recall_ours.append(len(support & set(tops[0])) / len(support))
        recall_theirs.append(len(support & set(tops[1])) / len(support))
    return {"top1_agreement": float(np.mean(top1)), "recall5_ours": float(np.mean(recall_ours)),
            "recall5_sentence_transformers": float(np.mean(recall_theirs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    claim_outputs(parser, args, "sentence_transformers_encoding.json", "sentence_transformers_encoding.md")
    torch.set_num_threads(args.threads)
    corpus = load_book_corpus(require_data_subdir("noise/gutenberg"), "all").sentences
    texts = [corpus[i] for i in np.random.default_rng(0).choice(len(corpus), args.sentences, replace=False)]
    embedder = TextEmbedder(disk_cache=False)
    ours, theirs = embedder.encode_uncached, library_encoder(embedder.max_length, embedder.batch_size)
    for encode in (ours, theirs):  # warm-up: first calls allocate and pick kernels
        encode(texts[:64])
    speeds: dict[str, list[float]] = {"TextEmbedder": [], "sentence-transformers": []}
    for round_index in range(args.rounds):
        for name, encode in zip(speeds, (ours, theirs)):
            speeds[name].append(timed(encode, texts))
            print(f"round {round_index} {name}: {speeds[name][-1]:.1f} sentences/s", flush=True)
    a, b = ours(texts), theirs(texts)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    vectors = {"identical_rows": float(np.mean((a == b).all(axis=1))), "max_abs_difference": float(np.abs(a - b).max()),
               "cosine_min": float(cosine.min())}
    retrieval = retrieval_agreement(ours, theirs, args.episodes, args.tokens)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    meta = {"sentences": args.sentences, "rounds": args.rounds, "threads": args.threads, "episodes": args.episodes,
            "tokens": args.tokens, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "load_average": os.getloadavg()}
    write_json(args.out / "sentence_transformers_encoding.json",
               {"meta": meta, "speeds": speeds, "vectors": vectors, "retrieval": retrieval})
    ratio = median["sentence-transformers"] / median["TextEmbedder"]
    rows = [[name, f"{median[name]:.1f}", ", ".join(f"{v:.0f}" for v in speeds[name])] for name in speeds]
    text = (f"# sentence-transformers as the encoder? ({args.sentences} real book sentences, {args.threads} thread(s))\n\n"
            f"    python -m qrag_benchmarks.studies.sentence_transformers_encoding --sentences {args.sentences} "
            f"--rounds {args.rounds} --episodes {args.episodes}\n\n"
            f"Load average at the end {meta['load_average'][0]:.1f} on {meta['cpu_count']} cores (other jobs ran): read "
            "the ratio, measured in one process with the two interleaved.\n\n"
            + markdown_table(["encoder", "median sentences/s", "rounds"], rows)
            + f"\nsentence-transformers / TextEmbedder speed: **{ratio:.2f}x**.\n\n"
            f"Vectors: {vectors['identical_rows']:.1%} of rows bit-identical, largest absolute difference "
            f"{vectors['max_abs_difference']:.2e}, lowest cosine {vectors['cosine_min']:.6f}.\n\n"
            f"Dense retrieval on {args.episodes} real validation episodes of {args.tokens} tokens (qa1-qa3): top-1 "
            f"agreement {retrieval['top1_agreement']:.3f}; recall@5 of the supporting facts "
            f"{retrieval['recall5_ours']:.3f} (TextEmbedder) against {retrieval['recall5_sentence_transformers']:.3f}.\n\n" + NOTES)
    write_atomic(args.out / "sentence_transformers_encoding.md", text)
    print(text)


if __name__ == "__main__":
    main()
