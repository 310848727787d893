"""How many official bAbI test questions also appear, word for word, in the training file.

    python -m qrag_benchmarks.studies.babi_overlap --data-dir ../shared/data --out benchmarks/studies/results

A test question "appears in training" when a training sample has the same story facts and the same
question. bAbI's task spaces are small, and qa4 (two-argument relations) repeats most of its test
questions in the training file, so a qa4 test score partly measures recall of training questions;
the tables that report qa4 say so. Writes ``babi_overlap.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_gym.data.babi import TASKS, load_babi_task
from qrag_gym.data.paths import require_data_subdir


def overlap(babi_dir: Path, task: str) -> dict:
    """Test questions, and how many of them (facts and question alike) are also training samples."""
    train = {(s.facts, s.question) for s in load_babi_task(babi_dir, task, "train")}
    test = load_babi_task(babi_dir, task, "test")
    shared = sum((s.facts, s.question) in train for s in test)
    return {"task": task, "test_questions": len(test), "also_in_train": shared, "share": shared / len(test)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--data-dir", help="folder holding babi/en-10k (default: $QRAG_DATA_DIR)")
    args = parser.parse_args(argv)
    claim_outputs(parser, args, "babi_overlap.json", "babi_overlap.md")
    babi_dir = require_data_subdir("babi/en-10k", args.data_dir)
    rows = [overlap(babi_dir, task) for task in TASKS]
    write_json(args.out / "babi_overlap.json", rows)
    table = markdown_table(["task", "test questions", "also in the training file", "share"],
                           [[r["task"], r["test_questions"], r["also_in_train"], f"{r['share']:.3f}"] for r in rows])
    write_atomic(args.out / "babi_overlap.md", "# Official bAbI test questions that also appear in the training file\n\n"
                 "Same story facts and same question. `python -m qrag_benchmarks.studies.babi_overlap`.\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
