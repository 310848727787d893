"""``qrag-train``: train a Q-RAG retriever, with validation, TensorBoard and resumable checkpoints.

    qrag-train --task qa2 --out runs/qa2 --max-minutes 30
    qrag-train --task niah:all --out runs/niah --max-minutes 10     # one model for the eight RULER variants
    qrag-train --task hotpotqa --out runs/hotpotqa --max-minutes 20
    qrag-train --task qa2 --preset cpu-stage --out runs/qa2-stage --set stage_base=runs/qa2/best   # beyond the paper

writes ``runs/qa2/model`` (last), ``runs/qa2/best`` (best validation success@k), TensorBoard event
files, and ``trainer_state.pt`` every ``checkpoint_every`` updates; ``--resume`` continues from it.
A run folder that already holds files is refused unless ``--resume`` or ``--overwrite`` says what to do
with it: a fresh run's first validation would otherwise replace the models already there.

This module only parses: torch and the learner load after, so ``--help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def train_parser() -> argparse.ArgumentParser:
    """The ``qrag-train`` command line."""
    parser = argparse.ArgumentParser(prog="qrag-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="qa1",
                        help="qa1..qa5, niah:<variant> or niah:all (RULER, trained at 4K tokens), or hotpotqa")
    parser.add_argument("--preset", choices=("cpu", "cpu-stage", "paper"), default="cpu",
                        help="cpu: frozen MiniLM + adapters (default); cpu-stage: the candidate stage (beyond the paper) "
                             "on a frozen cpu model, given with --set stage_base=RUN/best; paper: full fine-tuning of "
                             "contriever (GPU); the run starts from the named preset PRESET/TASK (e.g. cpu/qa2)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--updates", type=int, help="total optimiser updates (overrides the preset)")
    parser.add_argument("--max-minutes", type=float, help="stop after this much wall time")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/trainer_state.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a non-empty OUT, replacing the models and trainer state there")
    parser.add_argument("--data-dir", help="folder with babi/ and noise/ (else $QRAG_DATA_DIR)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser


def train_main(argv: list[str] | None = None) -> None:
    parser = train_parser()
    args = parser.parse_args(argv)
    from qrag_agents.qrag.train import run_from_args  # torch, the envs and the learner: after parsing

    run_from_args(parser, args)
