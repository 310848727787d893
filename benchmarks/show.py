"""``qrag-bench show RUN --agent A --task T --episode N``: one recorded episode, rendered for debugging.

Records hold ids, not text (question index, reset seed, supporting/selected/kept chunk ids). The
episode's document is rebuilt by resetting the same evaluation env with the recorded seed and
question, checked against the record's supporting ids, then the picks are listed in order with their
text, whether each was supporting and whether the agent kept it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from qrag_benchmarks.report import load_records
from qrag_gym.evaluation import make_eval_env


def find_record(records: list[dict[str, Any]], agent: str, task: str, episode: int, length: str | None,
                seed: int) -> dict[str, Any]:
    """The one record of (agent, task, length, seed, episode); an error lists what the run has instead."""
    matches = [r for r in records if r["agent"] == agent and r["task"] == task and r["episode"] == episode
               and r["seed"] == seed and (length is None or r["length"] == length)]
    if len(matches) == 1:
        return matches[0]
    cells = sorted({(r["agent"], r["task"], r["length"], r["seed"]) for r in records})
    listing = ", ".join(f"{a}/{t}/{n}/seed {s}" for a, t, n, s in cells[:20])
    if not matches:
        raise ValueError(f"no episode {episode} of {agent} on {task} (length {length or 'any'}, seed {seed}); "
                         f"the run has: {listing}")
    raise ValueError(f"{len(matches)} records match: give --length ({', '.join(sorted({r['length'] for r in matches}))})")


def render(record: dict[str, Any], data_dir: str | None) -> str:
    """The episode as text: the question, each pick in order (``*`` supporting, ``kept``), what was missed."""
    if record.get("question_index") is None and record.get("split") is None:
        raise ValueError("this record predates the id fields (question_index, split): re-run the cell to show it")
    env = make_eval_env(record["task"], record["context_tokens"], record["split"], data_dir=data_dir)
    question = record.get("question_index")
    _, info = env.reset(seed=record["reset_seed"], options=None if question is None else {"question_index": question})
    if sorted(info["supporting_ids"]) != record["supporting"]:
        raise ValueError("the rebuilt episode differs from the recorded one (other data folder or package version?)")
    chunks, supporting, kept = env.unwrapped.chunks, set(record["supporting"]), set(record["kept"])
    answer = "–" if record["answer_correct"] is None else f"{record['answer_correct']:.2f}"
    head = (f"{record['agent']} on {record['task']} at {record['length']} ({record['split']} split"
            f"{'' if question is None else f', question {question}'}), seed {record['seed']}, episode {record['episode']}: "
            f"success@k {record['success_at_k']:.0f}, F1 {record['f1']:.2f}, answer {answer}")
    lines = [head, f"Q: {info['question']}   (answer: {info['answer']})",
             f"document: {info['num_chunks']} chunks, {info['num_tokens']} tokens"]
    for step, index in enumerate(record["selected"], start=1):
        mark = "*" if index in supporting else " "
        lines.append(f"{step:>2}. {mark} [{index:>7}] {'kept' if index in kept else '    '}  {chunks[index]}")
    missed = sorted(supporting - set(record["selected"]))
    lines.append("supporting chunks never picked: " + (", ".join(f"[{i}] {chunks[i]}" for i in missed) or "none"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qrag-bench show", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a qrag-bench output folder")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--episode", type=int, required=True)
    parser.add_argument("--length", help="length label (needed when the run has several)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="the data folder the run used (default: $QRAG_DATA_DIR)")
    args = parser.parse_args(argv)
    records = load_records(args.run)
    if not records:
        parser.error(f"{args.run} holds no benchmark records")
    try:
        print(render(find_record(records, args.agent, args.task, args.episode, args.length, args.seed), args.data_dir))
    except (ValueError, FileNotFoundError) as err:  # a missing data folder or test file too
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
