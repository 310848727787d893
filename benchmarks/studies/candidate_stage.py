"""Issue 16 study: Q-RAG's candidate stage (``candidate_stage=true``) against faithful Q-RAG and a fixed rule.

    qrag-train --task qa2 --out runs/ablation/qa2-cand --updates 2000 --threads 1 --set candidate_stage=true
    qrag-evaluate --model runs/ablation/qa2-cand/best --split validation --lengths 1K 4K --episodes 1000 \\
        --threads 1 --json runs/ablation/qa2-cand.json                 # the same for qa3
    python -m qrag_benchmarks.studies.candidate_stage rule --model runs/ablation/qa2-floatpos/best \\
        --json runs/ablation/qa2-floatpos-latest.json                  # the fixed rule on the baseline model
    python -m qrag_benchmarks.studies.candidate_stage table runs/ablation --runs qa2-floatpos qa2-floatpos-latest ...

The baselines (``*-floatpos``) are the faithful runs of ``positions_ablation.md`` (same preset, seed and
2,000 updates). The fixed rule is the issue's probe: at each of the task's first k steps (k = its number
of supporting facts: qa2 2, qa3 3) take the *latest* chunk in the document among those whose Q is within
``--margin`` (0.02) of the best, then argmax; it reads the baseline model's Q and is evaluated on the same
1,000 validation episodes a length through the one runner. Writes ``candidate_stage.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, markdown_table, write_atomic
from qrag_benchmarks.studies.positions_ablation import train_minutes

SUPPORTING_FACTS = {"qa1": 1, "qa2": 2, "qa3": 3, "qa4": 1, "qa5": 1}
"""How many supporting facts every question of a bAbI task has: the rule's k, a property of the task."""


def latest_within_margin_agent(model: Path, margin: float, device: str = "cpu") -> Any:
    """A :class:`QRAGAgent` on ``model`` that, for the task's first k steps, picks the latest chunk whose Q is
    within ``margin`` of the best (the issue's fixed rule), and argmax after; its stop reads the max Q."""
    import torch

    from qrag_agents.qrag.agent import QRAGAgent
    from qrag_agents.qrag.inference import step_q_values

    class LatestWithinMargin(QRAGAgent):
        @torch.no_grad()
        def act(self, obs: dict[str, Any], info: dict[str, Any], env: Any) -> int:
            base, selected = env.unwrapped, list(info["selected_order"])
            q = step_q_values(self.network, self._chunks, base.question, base.chunks, selected, info["action_mask"])
            best = float(q.max())
            action = int(q.argmax())
            if len(selected) < SUPPORTING_FACTS[info["task"]]:
                action = int((q >= best - margin).nonzero().max())
            self._max_q.append(best)
            return action

    return LatestWithinMargin(model=str(model), device=device)


def evaluate_rule(args: argparse.Namespace) -> None:
    """The fixed rule on ``--model`` through the one runner, written like ``qrag-evaluate --json``."""
    import torch

    from qrag_agents.qrag.evaluate import AGENT_NAME, model_task
    from qrag_gym.evaluation import group_summaries, make_eval_env, plan_cells, run_cell
    from qrag_gym.tasks import parse_length

    if args.json.exists():
        raise SystemExit(f"--json {args.json} exists; choose another file (this command never replaces one)")
    if args.margin < 0:
        raise SystemExit(f"--margin must be at least 0, got {args.margin}")
    task = model_task(args.model)
    if task not in SUPPORTING_FACTS:
        raise SystemExit(f"--model {args.model}: trained on {task}; the rule is defined for {sorted(SUPPORTING_FACTS)}")
    torch.set_num_threads(args.threads)
    agent = latest_within_margin_agent(args.model, args.margin)
    records = []
    for cell in plan_cells([AGENT_NAME], [task], [parse_length(text) for text in args.lengths], [0], args.episodes):
        env = make_eval_env(cell.task, cell.tokens, "validation")
        records += run_cell(cell, agent, env)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in group_summaries(records, ("task", "length"))[-1].items()}), flush=True)
    write_atomic(args.json, json.dumps({"command": ["python", "-m", "qrag_benchmarks.studies.candidate_stage",
                                                    *sys.argv[1:]],
                                        "summaries": group_summaries(records, ("task", "length")),
                                        "records": records}, indent=1))


def row(folder: Path, name: str) -> list[str]:
    """One table row: each length's success@k [Wilson 95%] / F1 / answer, then updates and s/update."""
    result = json.loads((folder / f"{name}.json").read_text())
    cells = [f"{s['success_at_k']:.3f} [{s['success_at_k_low']:.3f}, {s['success_at_k_high']:.3f}] / {s['f1']:.3f} / "
             f"{s['answer_correct']:.3f}" for s in result["summaries"]]
    run = folder / name
    config = json.loads((run / "best" / "config.json").read_text()) if (run / "best").is_dir() else {}
    minutes = train_minutes(run) if run.is_dir() else None
    updates = config.get("total_updates")
    seconds = f"{minutes * 60 / updates:.2f}" if minutes and updates else "–"
    return [name, *cells, str(updates or "–"), seconds]


def table(args: argparse.Namespace) -> None:
    header = ["variant", "1K: success@k [95%] / F1 / answer", "4K: success@k [95%] / F1 / answer", "updates",
              "s/update (shared 2 cores)"]
    text = markdown_table(header, [row(args.folder, name) for name in args.runs])
    notes = args.notes.read_text() if args.notes else ""
    write_atomic(args.out / "candidate_stage.md", "# Candidate stage (issue 16), qa2 and qa3\n\n"
                 + __doc__.split("\n\n", 1)[1] + "\n" + text + "\n" + notes)
    print(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rule = commands.add_parser("rule", help="evaluate the fixed 'latest within margin' rule on a faithful model")
    rule.add_argument("--model", type=Path, required=True, help="a Q-RAG model folder (e.g. runs/ablation/qa2-floatpos/best)")
    rule.add_argument("--margin", type=float, default=0.02, help="Q margin below the best (the issue's 0.02)")
    rule.add_argument("--lengths", nargs="+", default=["1K", "4K"])
    rule.add_argument("--episodes", type=int, default=1000)
    rule.add_argument("--threads", type=int, default=1)
    rule.add_argument("--json", type=Path, required=True, help="where to write summaries and records (never replaced)")
    rows = commands.add_parser("table", help="write candidate_stage.md from runs and their evaluation JSONs")
    rows.add_argument("folder", type=Path, help="folder with <name>/ runs and <name>.json evaluations")
    rows.add_argument("--runs", nargs="+", required=True, help="variant names, in table order")
    rows.add_argument("--notes", type=Path, help="a text file with the reading, appended under the table")
    add_out_argument(rows, STUDY_RESULTS)
    args = parser.parse_args(argv)
    if args.command == "rule":
        if args.episodes < 1 or args.threads < 1:
            parser.error("--episodes and --threads must be at least 1")
        evaluate_rule(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
