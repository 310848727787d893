"""How closely the package's bAbI generator matches the real training file of a task (issue 16).

Generated stories are only useful as extra training data if a learner cannot tell them from real ones by
anything the task does not ask about. This compares, for the real training stories and the training
stories of ``--questions`` generated questions: the kinds of supporting facts (take / drop / move, in the
file's order), how far back each supporting fact sits from the question (in story sentences), and the
story length at the question. A learner that ranks facts by recency learns whatever distance the data shows.

    python -m qrag_benchmarks.studies.generator_fidelity --task qa3 --questions 10000
"""

from __future__ import annotations

import argparse
import collections
import os

import numpy as np

from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_gym.data.babi import BabiSample, load_split, split_samples
from qrag_gym.data.babi_generator import DROP_VERBS, GIVE_VERBS, TAKE_VERBS, generate_babi_samples
from qrag_gym.data.paths import require_data_subdir


def fact_kind(fact: str) -> str:
    words = f" {fact} "
    for kind, verbs in (("give", GIVE_VERBS), ("take", TAKE_VERBS), ("drop", DROP_VERBS)):
        if any(f" {verb} the " in words for verb in verbs):
            return kind
    return "move"


def profile(samples: list[BabiSample]) -> dict:
    """Share of each supporting-kind pattern, the distances of supporting facts from the question, story lengths."""
    kinds = collections.Counter("/".join(fact_kind(s.facts[i]) for i in s.supporting) for s in samples)
    back = np.array([[len(s.facts) - 1 - i for i in s.supporting] for s in samples])
    lengths = np.array([len(s.facts) for s in samples])
    return {"questions": len(samples), "kinds": {k: v / len(samples) for k, v in kinds.most_common()},
            "back_median": np.median(back, axis=0).tolist(), "back_mean": back.mean(axis=0).round(2).tolist(),
            "nearest_median": float(np.median(back.min(axis=1))), "farthest_median": float(np.median(back.max(axis=1))),
            "length_median": float(np.median(lengths))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="qa3")
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--data-dir", default=os.environ.get("QRAG_DATA_DIR"))
    add_out_argument(parser, STUDY_RESULTS)
    args = parser.parse_args(argv)
    claim_outputs(parser, args, f"generator_fidelity_{args.task}.json", f"generator_fidelity_{args.task}.md")
    real = load_split(require_data_subdir("babi/en-10k", args.data_dir), args.task, "train")
    generated = split_samples(generate_babi_samples(args.task, np.random.default_rng(2), args.questions), "train")
    profiles = {"real": profile(real), "generated": profile(generated)}
    patterns = sorted(set(profiles["real"]["kinds"]) | set(profiles["generated"]["kinds"]))
    rows = [[name, p["questions"], *(f"{p['kinds'].get(k, 0):.2f}" for k in patterns), p["back_median"],
             p["back_mean"], p["nearest_median"], p["farthest_median"], p["length_median"]] for name, p in profiles.items()]
    command = f"python -m qrag_benchmarks.studies.generator_fidelity --task {args.task} --questions {args.questions}"
    text = "\n".join([f"# Generated against real {args.task} training stories", "",
                      markdown_table(["stories", "questions", *(f"share {k}" for k in patterns),
                                      "sentences back, median (per supporting fact)", "mean",
                                      "nearest supporting fact back, median", "farthest, median",
                                      "story sentences at the question, median"], rows),
                      "    " + command, ""])
    write_json(args.out / f"generator_fidelity_{args.task}.json", {"command": command, **profiles})
    write_atomic(args.out / f"generator_fidelity_{args.task}.md", text)
    print(text)


if __name__ == "__main__":
    main()
