"""Issue 15 study: does ``rollout_precision=bfloat16`` learn what float32 learns, in the same number of updates?

The bfloat16 rollout (:attr:`~qrag_agents.qrag.config.QRAGConfig.rollout_precision`) runs only the rollout's
chunk encoders in bfloat16; its speed is in ``learner_speed.md``. This study compares its learning with a
float32 run of the same preset, seed and number of updates: the validation curve the trainer logged (200
episodes every ``eval_every`` updates) and the best checkpoint on the same 1,000 validation episodes a length
through the one runner, paired per episode.

    qrag-train --task qa1 --out runs/ablation/qa1-bf16 --updates 1000 --threads 1 --set rollout_precision=bfloat16
    qrag-train --task qa2 --out runs/ablation/qa2-bf16 --updates 2000 --threads 1 --set rollout_precision=bfloat16
    qrag-evaluate --model runs/ablation/qa2-bf16/best --split validation --lengths 1K 4K --episodes 1000 \\
        --threads 1 --json runs/ablation/qa2-bf16.json                      # the same for qa1
    python -m qrag_benchmarks.studies.rollout_precision runs/ablation --pairs qa1-faithful=qa1:qa1-bf16 \\
        qa2-shipped=qa2:qa2-bf16 --float32-runs runs

The float32 runs are the shipped models' own training runs (``runs/qa1``: 1,000 updates, ``runs/qa2``: 2,000,
the same preset and seed), evaluated into ``qa1-faithful.json`` / ``qa2-shipped.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic
from qrag_benchmarks.studies.candidate_stage import paired_difference

CURVE_TAG = "eval/success_at_k"
NOTES = """
The paired intervals cover episode noise only, not the spread between two training runs: the two rollouts draw
different actions from the first update on, so the runs differ the way two seeds do.
"""


def validation_curve(run: Path) -> dict[int, float]:
    """``transitions -> validation success@k`` logged by the trainer (TensorBoard ``eval/success_at_k``, whose
    step is the number of transitions so far: ``num_envs x rollout_steps`` per update)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    if CURVE_TAG not in events.Tags().get("scalars", []):
        raise SystemExit(f"{run}: no {CURVE_TAG} scalar in its tensorboard folder; is it a qrag-train run?")
    return {event.step: event.value for event in events.Scalars(CURVE_TAG)}


def summary_cells(result: dict) -> list[str]:
    return [f"{s['success_at_k']:.3f} [{s['success_at_k_low']:.3f}, {s['success_at_k_high']:.3f}] / {s['f1']:.3f}"
            for s in result["summaries"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with the bfloat16 runs and every <name>.json evaluation")
    parser.add_argument("--pairs", nargs="+", required=True,
                        help="FLOAT32_JSON=FLOAT32_RUN:BF16_RUN, e.g. qa2-shipped=qa2:qa2-bf16")
    parser.add_argument("--float32-runs", type=Path, required=True, help="folder holding the float32 training runs")
    add_out_argument(parser, STUDY_RESULTS)
    args = parser.parse_args(argv)
    pairs = []
    for spec in args.pairs:
        reference, _, runs = spec.partition("=")
        float_run, _, bf16_run = runs.partition(":")
        if not (reference and float_run and bf16_run):
            parser.error(f"--pairs {spec!r}: expected FLOAT32_JSON=FLOAT32_RUN:BF16_RUN")
        pairs.append((reference, args.float32_runs / float_run, bf16_run))
    claim_outputs(parser, args, "rollout_precision.md")

    table, curves = [], []
    for reference, float_run, bf16_run in pairs:
        exact = json.loads((args.folder / f"{reference}.json").read_text())
        fast = json.loads((args.folder / f"{bf16_run}.json").read_text())
        task = exact["summaries"][0]["task"]
        lengths = [s["length"] for s in exact["summaries"]]
        paired = " / ".join(paired_difference(fast["records"], exact["records"], length) for length in lengths)
        table.append([task, "float32", *summary_cells(exact), "–"])
        table.append([task, "bfloat16", *summary_cells(fast), paired])
        float_curve, bf16_curve = validation_curve(float_run), validation_curve(args.folder / bf16_run)
        for step in sorted(set(float_curve) & set(bf16_curve)):
            curves.append([task, f"{step:,}", f"{float_curve[step]:.3f}", f"{bf16_curve[step]:.3f}",
                           f"{bf16_curve[step] - float_curve[step]:+.3f}"])
    header = ["task", "rollout", *(f"{length}: success@k [95%] / F1" for length in lengths),
              "paired Δ success@k, bfloat16 - float32"]
    text = ("# bfloat16 rollouts against float32: the same learning? (issue 15)\n\n"
            + __doc__.split("\n\n", 1)[1] + "\n## Best checkpoints, 1,000 validation episodes a length\n\n"
            + markdown_table(header, table)
            + "\n## Validation curves (200 episodes each check, logged while training)\n\n"
            + markdown_table(["task", "transitions", "float32", "bfloat16", "difference"], curves)
            + NOTES)
    write_atomic(args.out / "rollout_precision.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
