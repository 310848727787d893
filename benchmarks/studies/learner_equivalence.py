"""Does the learner on ids and tensors learn what the per-episode learner learned? (issue 15, item 4: "the same
validation success@k within noise after the same number of updates").

Both learners (:mod:`qrag_benchmarks.studies.baseline_learner`, the frozen d2713a5 learner, and the product's
:class:`~qrag_agents.qrag.learner.Learner`) train from the same seed on the ``cpu/<task>`` preset for
``--updates`` updates, one after the other in this process. The script records every update's td_loss of
both, whether the final online weights are equal tensor for tensor, and the validation success@k of each
final model on ``--episodes`` held-out validation episodes through the evaluation runner (greedy, the
validation stories, never the test file; reset seeds from 10,000 as ``qrag-train`` validates).

    python -m qrag_benchmarks.studies.learner_equivalence --task qa1 --updates 200 --episodes 200
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from qrag_agents.qrag.agent import QRAGAgent
from qrag_agents.qrag.config import preset_config
from qrag_agents.qrag.train import VALIDATION_SEED, make_validation_envs
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_benchmarks.studies.learner_speed import LEARNERS, build
from qrag_gym.evaluation import run_episodes, summarize



def train_one(cls: type, task: str, updates: int, data_dir: str | None) -> tuple[Any, list[float], float]:
    """``updates`` updates of a fresh ``cls`` learner (seed 0, ``cpu/<task>`` preset); its td_losses and CPU seconds."""
    config = preset_config(f"cpu/{task}", {"candidate_stage": False}, updates)  # faithful, as the baseline
    learner = build(cls, config, data_dir)
    losses, start = [], time.process_time()
    for _ in range(updates):
        losses.append(learner.update(learner.rollout())["losses/td_loss"])
    return learner, losses, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--task", default="qa1")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=200, help="validation episodes per model")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    claim_outputs(parser, args, f"learner_equivalence_{args.task}.json", f"learner_equivalence_{args.task}.md")
    for name in ("updates", "episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    trained = {name: train_one(cls, args.task, args.updates, args.data_dir) for name, cls in LEARNERS.items()}
    (base, base_losses, _), (new, new_losses, _) = trained.values()
    config = new.config
    (task, env), = make_validation_envs(config, args.data_dir)
    seeds = range(VALIDATION_SEED, VALIDATION_SEED + args.episodes)
    summaries = {name: summarize(run_episodes(QRAGAgent(network=learner.online), env, seeds, task))
                 for name, (learner, _, _) in trained.items()}
    base_state, new_state = base.online.state_dict(), new.online.state_dict()
    same_weights = base_state.keys() == new_state.keys() and all(torch.equal(base_state[k], new_state[k]) for k in base_state)
    results = {"task": args.task, "updates": args.updates, "validation_episodes": args.episodes,
               "same_td_loss_every_update": base_losses == new_losses, "same_final_weights": same_weights,
               "learners": {name: {"td_losses": losses, "train_cpu_s": seconds, "validation": summaries[name]}
                            for name, (_, losses, seconds) in trained.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"learner_equivalence_{args.task}.json", results)
    rows = [[name, f"{summaries[name]['success_at_k']:.3f} [{summaries[name]['success_at_k_low']:.3f}, "
             f"{summaries[name]['success_at_k_high']:.3f}]", f"{summaries[name]['f1']:.3f}", f"{seconds:.0f}"]
            for name, (_, _, seconds) in trained.items()]
    text = (f"# Same learning, ids + tensors vs per-episode learner: {args.task}, {args.updates} updates, seed 0\n\n"
            f"`cpu/{args.task}` preset ({config.num_envs} episodes x {config.rollout_steps} steps per update), one torch "
            f"thread. Validation: {args.episodes} held-out validation episodes per model (reset seeds from "
            f"{VALIDATION_SEED}), greedy, through the evaluation runner; success@k with its Wilson 95% interval.\n\n"
            + markdown_table(["learner", "validation success@k [95%]", "fact F1", "training CPU s"], rows)
            + f"\nSame td_loss at every one of the {args.updates} updates: **{results['same_td_loss_every_update']}**. "
            f"Final online weights equal tensor for tensor: **{same_weights}**.\n\n"
            "    python -m qrag_benchmarks.studies.learner_equivalence --task " + args.task
            + f" --updates {args.updates} --episodes {args.episodes}\n")
    write_atomic(args.out / f"learner_equivalence_{args.task}.md", text)
    print(text)


if __name__ == "__main__":
    main()
