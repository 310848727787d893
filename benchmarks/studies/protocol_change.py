"""Before/after of every benchmark figure across the change to the one evaluation runner.

    git show 68b3960:benchmarks/results/episodes.json.gz > /tmp/before.json.gz
    python -m qrag_benchmarks.studies.protocol_change /tmp/before.json.gz benchmarks/results/episodes.json.gz

Before: the harness let envs end an episode once every supporting fact was selected (an oracle stop in
precision, F1 and answer accuracy), on the validation stories of the training files. After: every
episode runs to T, agents keep what they decide, on the official bAbI test stories (NIAH and HotpotQA:
validation). Q-RAG's checkpoints were also retrained. Writes ``protocol_change.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic
from qrag_gym.evaluation import group_summaries

METRICS = (("success_at_k", "success@k"), ("success_at_t", "success@T"), ("f1", "F1"), ("answer_correct", "answer"))


def cell_means(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """(agent, task, length) -> mean of each metric and the episode count ``n``, by the runner's summary."""
    return {(s["agent"], s["task"], s["length"]): {**s, "n": s["episodes"]}
            for s in group_summaries(json.loads(gzip.decompress(path.read_bytes())))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="episodes.json.gz of the old protocol")
    parser.add_argument("after", type=Path, help="episodes.json.gz of the one runner")
    add_out_argument(parser, STUDY_RESULTS)
    args = parser.parse_args(argv)
    claim_outputs(parser, args, "protocol_change.md")
    before, after = cell_means(args.before), cell_means(args.after)
    rows = []
    for key in sorted(set(before) & set(after)):
        old, new = before[key], after[key]
        cells = [f"{old[m]:.2f} → {new[m]:.2f}" if m in old and m in new else "–" for m, _ in METRICS]
        rows.append([*key, f"{old['n']} → {new['n']}", *cells])
    only = sorted(set(before) ^ set(after))
    text = ("# Benchmark figures before and after the one evaluation runner\n\n"
            "Before: episodes ended when the gold facts were in (an oracle stop), validation stories. After: every "
            "episode runs to T, the agent's own kept set, official bAbI test stories (NIAH, HotpotQA: validation); "
            "Q-RAG retrained. `python -m qrag_benchmarks.studies.protocol_change BEFORE AFTER`.\n\n"
            + markdown_table(["agent", "task", "length", "episodes", *(title for _, title in METRICS)], rows)
            + f"\n{len(only)} cells appear on one side only.\n")
    write_atomic(args.out / "protocol_change.md", text)
    print(text)


if __name__ == "__main__":
    main()
