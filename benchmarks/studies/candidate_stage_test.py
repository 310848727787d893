"""Issue 16 study: a candidate-stage model against faithful Q-RAG on the official test stories, 1K to 10M tokens.

Both models are evaluated by ``qrag-bench`` (the one runner) on the same episodes; this script reads the two
sets of run folders and writes, per length, success@k [Wilson 95%] / fact F1 / answer accuracy of each, and the
paired per-episode differences (stage minus faithful, normal 95% interval). ``--variant joint`` (the stage
trained together with its base, ``candidate_stage=true``) writes ``candidate_stage_test.md``; ``--variant
frozen-base`` (the stage trained on a frozen faithful model, ``stage_base=...``) writes
``stage_frozen_base_test_<task>.md``.

    qrag-bench --agents qrag --tasks qa2 --lengths 1K 4K 32K 128K 1M --episodes 1000 \\
        --episodes-at 128K=300 1M=100 --shortlist 16 --qrag-models runs --threads 1 --out runs/bench-faithful
    qrag-bench --agents qrag --tasks qa2 --lengths 10M --episodes 30 --shortlist 16 --qrag-models runs \\
        --threads 1 --out runs/bench-faithful-10M        # the same two with runs/qa2 = the stage model
    python -m qrag_benchmarks.studies.candidate_stage_test --faithful runs/bench-faithful runs/bench-faithful-10M \\
        --stage runs/bench-stage runs/bench-stage-10M --variant joint --task qa2

The frozen-base stage (qa2 shown; qa3 and qa4 alike, with their faithful runs' folders):

    qrag-train --task qa2 --out runs/ablation/qa2-stagebase --updates 2000 --threads 1 \\
        --set candidate_stage=true stage_base=runs/qa2/best
    mkdir -p runs/models-qa2-stagebase/qa2 && ln -s ../../ablation/qa2-stagebase/best runs/models-qa2-stagebase/qa2/best
    qrag-bench --agents qrag --qrag-models runs/models-qa2-stagebase --tasks qa2 --lengths 1K 4K 32K 128K 1M \\
        --episodes 1000 --episodes-at 128K=300 1M=100 --shortlist 16 --threads 1 --out runs/bench-qa2-stagebase
    qrag-bench ... --lengths 10M --episodes 30 --out runs/bench-qa2-stagebase-10M      # as the faithful 10M run
    python -m qrag_benchmarks.studies.candidate_stage_test --faithful runs/bench-qrag-qa23 runs/bench-qrag-10M-runs \\
        --stage runs/bench-qa2-stagebase runs/bench-qa2-stagebase-10M --variant frozen-base --task qa2

(``qrag-bench --agents qrag qrag-stage --qrag-models runs`` with ``runs/qa2-stage/best`` gives both in one folder:
pass it as ``--faithful`` and ``--stage``.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qrag_benchmarks.report import load_records
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic
from qrag_benchmarks.studies.candidate_stage import paired_difference
from qrag_gym.evaluation import summarize
from qrag_gym.tasks import LENGTHS

JOINT_NOTES = """Reading:
- Up to 32K the stage is a clear gain and meets the issue's bar (fact F1 and answer accuracy >= 0.95);
  at 128K it is level; at 1M and 10M it is clearly worse, while faithful Q-RAG gets *better* with length
  there (its relative positions span the same range at any length).
- Why, probably: trained on 100-sentence documents, the stage has only seen top-8 sets made of story facts;
  in a million-token document the top 8 by base Q hold book sentences close to the facts, and the stage,
  which reads their content and order, misranks them. Training it on longer documents was not tried.
- The certified shortlist (16 a bucket, used at 1M and 10M) serves the stage exactly: the same picks and
  kept chunks as a full scan in 10 of 10 1M episodes.
- Not adopted: the package is for long documents, and trading 10M-token answer accuracy 1.00 for 0.67 is not
  acceptable. It shipped for a while as `qa2-stage`; that name now holds the stage trained on the frozen
  faithful model, which gains at every length (`stage_frozen_base_test_qa2.md`).
"""


FROZEN_BASE_NOTES = """Reading:
- The stage was trained on top of the task's shipped faithful model (``--set candidate_stage=true
  stage_base=runs/<task>/best``; 2,000 updates for qa2/qa3, 1,000 for qa1/qa4/qa5, the faithful budgets), whose
  weights stayed bit-identical: only the stage learned. The base Q is the faithful model's at every length, and
  the stage can only reorder the top 8 that base already ranks.
- Trained jointly (``candidate_stage_test.md``), base and stage shared the work and the base stopped telling
  story facts from look-alike book sentences: in 7 of the joint qa2 model's 13 misses at 1M tokens its own base
  Q ranked a book sentence first ("Apple-trees are there." for a question about the apple).
"""
T2_NOTE = ("- ``t2``: the whole pipeline on the 2 cores (``--threads 2`` for the faithful run and for the stage), so both fit\n"
           "  the one-fact tasks' 10 minutes (idle: qa1 250 s + 334 s, qa4 231 s + 328 s, qa5 261 s + 341 s = 602 s). The\n"
           "  base is that run's own faithful model, not the shipped one (two threads sum in another order, so the runs\n"
           "  part ways from the first updates); the faithful column is the shipped faithful model, as in the other files.\n"
           "  Chosen on the validation stories (success@k at least the one-thread stage's) and shipped as ``<task>-stage``.\n")

TASK_NOTES = {
    "qa2": "- qa2: better at every length from 1K to 10M; fact F1 and answer accuracy 0.99-1.00 everywhere.\n",
    "qa3": ("- qa3: no real gain: success@k +0.00 to +0.05 up to 128K (intervals include 0), fact F1 level, answer\n"
            "  accuracy 0.03-0.07 lower. Not shipped. Every one of 150 validation misses had the right fact among the\n"
            "  stage's 8 candidates and picked another story fact (``candidate_context`` is the follow-up).\n"),
    "qa1": ("- qa1: success@k +0.02 to +0.04 at every length up to 10M (0.99-1.00), fact F1 0.997-1.000, answer\n"
            "  unchanged (1.00); the 10M row is the shipped float16 model as ``qrag-stage``, 30 episodes.\n"),
    "qa4_500": ("- qa4 with a 500-update stage (half the 1,000, so that faithful run plus stage fit the 10-minute budget:\n"
                "  365 s + about 240 s, half the 477 s measured idle for 1,000): fact F1 0.94-0.95, answer accuracy 0.97-0.98, just short of\n"
                "  the 0.95 target; ``qa4-stage`` shipped the 1,000-update run until the two-thread ``t2`` run.\n"),
    "qa5": "- qa5: success@k +0.03 to +0.05 (0.99-1.00), fact F1 0.99-1.00, answer accuracy level (0.99).\n",
    "qa3_c16": ("- qa3 with 16 candidates (``candidate_count=16``): small gains at every length, success@k +0.03 to\n"
                "  +0.05, fact F1 +0.03 to +0.05, answer accuracy +0.04 to +0.06; far below the 0.95 target.\n"),
    "qa3_ctx": ("- qa3 with the selected chunks as context (``candidate_context=true``; chosen over 8 and 16 plain candidates\n"
                "  by the validation stories, where it had the best success@k and F1, and shipped as ``qa3-stage`` until\n"
                "  the ``gen2_ctx`` run replaced it):\n"
                "  success@k +0.06 to +0.10, fact F1 +0.03 to +0.07, answer accuracy level (-0.01 to +0.03); far below the\n"
                "  0.95 target (F1 0.86-0.88, answer 0.83-0.87). On these test stories the 16-candidate stage gave the\n"
                "  better answer accuracy (``stage_frozen_base_test_qa3_c16.md``). At 10M tokens (30 episodes, the shipped\n"
                "  float16 model as ``qrag-stage``) it is lower than faithful (answer -0.10 ± 0.17): too few episodes to\n"
                "  separate, but no sign of the gains at 1K-1M.\n"),
    "qa3_gen2_ctx": ("- qa3, the stage with context (as ``qa3_ctx``) on a different base: not the shipped faithful qa3 but one\n"
                     "  trained on the real plus generated stories (``train_source=real+generated``, ``qa3-gen2`` of\n"
                     "  ``generated_stories.md``), the stage trained on both too; the faithful column is the shipped faithful\n"
                     "  qa3, as in the other qa3 files. Chosen on the validation stories (success@k 0.82, F1 0.93 against 0.77\n"
                     "  and 0.89 for ``qa3_ctx``) and shipped as ``qa3-stage`` until ``qa3_gen2_qf``. On these test stories\n"
                     "  success@k +0.11 to +0.16\n"
                     "  and fact F1 +0.07 to +0.11 at 1K-1M, answer accuracy level; still short of the 0.95 target (F1\n"
                     "  0.91-0.92, answer 0.82-0.85). At 10M tokens (30 episodes, the shipped float16 model) no gain.\n"),
    "qa3_gen2_qf": ("- qa3, the stage of ``qa3_gen2_ctx`` on the same base that also reads the question as a token\n"
                    "  (``candidate_question=true``) and keeps its candidates above the other chunks (``candidate_floor=true``,\n"
                    "  without which a seed-43 run collapsed to success 0). Chosen on the validation stories (success@k 0.89,\n"
                    "  F1 0.95, answer 0.90 against 0.82 / 0.93 / 0.86 for ``qa3_gen2_ctx``; a second seed reached 0.83 / 0.94\n"
                    "  / 0.87) and shipped as ``qa3-stage`` until ``qa3_gen2_qf3500``, evaluated here as shipped (float16). The\n"
                    "  faithful column is the shipped faithful qa3.\n"),
    "qa3_gen2_qf3500": ("- qa3, the stage of ``qa3_gen2_qf`` trained longer: ``--updates 3500 --max-minutes 20`` (the learning rate\n"
                        "  decays over 3,500 updates; the clock stopped it at 3,263, best checkpoint update 3,200), which the\n"
                        "  frozen-base learner path fits in qa3's 30 minutes with the base's 552 s (1,764 s). Chosen on the\n"
                        "  validation stories (success@k 0.97, F1 0.99, answer 0.98 at 1K and 4K; a second seed the same) and\n"
                        "  shipped as ``qa3-stage``, evaluated here as shipped (float16). Paired against ``qa3_gen2_qf`` on these\n"
                        "  episodes: success@k +0.07 to +0.09, F1 +0.03 to +0.04, answer +0.07 to +0.08 at 1K-128K (all\n"
                        "  excluding 0), +0.04 / +0.02 / +0.04 at 1M (100 episodes, within noise). Fact F1 and answer accuracy\n"
                        "  are now at least 0.977 from 1K to 128K and 0.96 at 1M; at 10M (30 episodes) there is still no gain\n"
                        "  over faithful Q-RAG. The float32 run kept the same chunks as this float16 copy in all 2,000 test\n"
                        "  episodes at 1K and 4K (same figures; picks after the stop, where Q is flat, differ in 836).\n"),
    "qa1_t2": T2_NOTE,
    "qa4_t2": T2_NOTE,
    "qa5_t2": T2_NOTE,
    "qa5_t2c": ("- ``t2c``: qa5's pipeline as ``t2``, with both steps stopped by the clock, so it fits the 10 minutes by\n"
                "  construction (``--max-minutes 4`` for the faithful run, whose best checkpoint of update 500 is bit for bit\n"
                "  the ``t2`` one, ``--max-minutes 5`` for the stage: 869 updates). Idle: 257 s + 317 s = 574 s, where the\n"
                "  ``t2`` pair took 602 s once and 695 s on a second try. Level with ``t2`` on the validation stories and here\n"
                "  (every paired difference within 0.001); shipped as ``qa5-stage``.\n"),
    "qa4": ("- qa4: the faithful model kept both of a story's two facts in most episodes (fact F1 0.78); with the\n"
            "  stage the first pick is right more often and Q falls after it, so F1 is 0.96-0.98 at every length.\n"
            "  Answer accuracy goes 1.00 -> 0.97-0.99: the exact reader, given only the kept fact, fails when that\n"
            "  fact is the wrong one, where before it saw both.\n"),
}
NOTES = {"joint": JOINT_NOTES, "frozen-base": FROZEN_BASE_NOTES}


def records_of(folders: list[Path], task: str, agents: tuple[str, ...] = ("qrag",)) -> list[dict[str, Any]]:
    """The records of ``task`` in the run folders (each an output of ``qrag-bench``), in each folder those of the
    first of ``agents`` it has: a stage model is benchmarked as ``qrag-stage`` beside ``qrag``, or as ``qrag``
    on its own."""
    found = []
    for folder in folders:
        records = [r for r in load_records(folder) if r["task"] == task]
        agent = next((name for name in agents if any(r["agent"] == name for r in records)), None)
        found += [r for r in records if r["agent"] == agent]
    if not found:
        raise SystemExit(f"no {' or '.join(agents)} {task} records in {', '.join(map(str, folders))}")
    return found


def cell(summary: dict[str, Any]) -> str:
    return (f"{summary['success_at_k']:.3f} [{summary['success_at_k_low']:.2f}, {summary['success_at_k_high']:.2f}] / "
            f"{summary['f1']:.3f} / {summary['answer_correct']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faithful", type=Path, nargs="+", required=True, help="qrag-bench run folders of faithful Q-RAG")
    parser.add_argument("--stage", type=Path, nargs="+", required=True, help="the same runs with the candidate stage")
    parser.add_argument("--task", default="qa2")
    parser.add_argument("--variant", choices=sorted(NOTES), default="joint",
                        help="how the stage model was trained: with its base (joint) or on a frozen faithful model")
    parser.add_argument("--label", default="", help="frozen-base only: a name for a stage setting, added to the "
                        "file name (stage_frozen_base_test_<task>_<label>.md), e.g. c16 for candidate_count=16")
    add_out_argument(parser, STUDY_RESULTS)
    args = parser.parse_args(argv)
    key = args.task + (f"_{args.label}" if args.label else "")
    name = "candidate_stage_test.md" if args.variant == "joint" else f"stage_frozen_base_test_{key}.md"
    claim_outputs(parser, args, name)
    faithful, stage = records_of(args.faithful, args.task), records_of(args.stage, args.task, ("qrag-stage", "qrag"))
    lengths = [length for length in LENGTHS if any(r["length"] == length for r in stage)]
    rows = []
    for length in lengths:
        mine, theirs = ([r for r in records if r["length"] == length] for records in (stage, faithful))
        rows.append([length, len(mine), cell(summarize(theirs)), cell(summarize(mine)),
                     *(paired_difference(stage, faithful, length, metric) for metric in ("success_at_k", "f1", "answer_correct"))])
    table = markdown_table(["length", "episodes", "faithful", "with the stage", "Δ success@k", "Δ F1", "Δ answer"], rows)
    how = "the candidate stage" if args.variant == "joint" else "the candidate stage on a frozen faithful base"
    write_atomic(args.out / name,
                 f"# {how.capitalize()} on the official {args.task} test stories (issue 16)\n\n"
                 + __doc__.split("\n\n", 1)[1] + "\nCells: success@k [Wilson 95%] / fact F1 / answer accuracy.\n\n"
                 + table + "\n" + NOTES[args.variant]
                 + (TASK_NOTES.get(key, "") if args.variant == "frozen-base" else ""))
    print(table)


if __name__ == "__main__":
    main()
