"""Q-RAG as a benchmark agent: greedy actions from a trained model, the Q-threshold stop as ``kept``.

``QRAGAgent()`` uses the models that ship in the package (:mod:`qrag_agents.qrag.pretrained`), one per
task, for whichever task an episode comes from; ``QRAGAgent.from_pretrained("qa2")`` one of them
for every task; ``QRAGAgent(models_dir="runs")`` a user's own ``runs/<task>/best`` folders;
``QRAGAgent(model="runs/qa2/best")`` one model for every task. A NIAH variant without its own model
falls back to the ``niah`` model (``qrag-train --task niah:all`` trains on all eight). ``shortlist=k`` takes the certified faiss shortlist on long documents
(same actions as the full scan, far cheaper steps at 1M-10M tokens; see :mod:`qrag_agents.qrag.inference`).
``QRAGAgent(network=...)`` wraps a network in memory (validation during training).
:class:`StagedQRAGAgent` (``qrag-stage`` in ``qrag-bench``) reads the ``<task>-stage`` models instead: the
candidate stage (beyond the paper, :mod:`qrag_agents.qrag.candidates`) trained on a frozen faithful model.

What it keeps: the picks before the first step whose max-Q fell to the threshold (the paper's Q-value
chunk filter; 0.5 by default, the model's ``q_threshold``). Evaluation episodes still run all T steps; the
picks after the stop are made but not handed to the reader.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from qrag_agents.qrag.checkpoint import load_model
from qrag_agents.qrag.inference import encode_document, keep_until_threshold, shortlist_step, step_q_values, use_shortlist
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.pretrained import PRETRAINED_DIR, pretrained_folder
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.document import Document
from qrag_agents.qrag.shortlist import ChunkIndex
from qrag_gym.tasks import short_name


class QRAGAgent:
    """Greedy ``argmax_a Q(s, a)`` over the available chunks, chunk embeddings computed once per episode."""

    suffix = ""
    """Appended to the task's name to find its model folder (``-stage`` for :class:`StagedQRAGAgent`)."""

    def __init__(self, model: str | None = None, models_dir: str | None = None, threshold: float | None = None,
                 shortlist: int | None = None, device: str = "cpu", network: QNetwork | None = None) -> None:
        self.model, self.threshold, self.shortlist = model, threshold, shortlist
        self.models_dir = None if models_dir is None else Path(models_dir)
        self.device, self._given = device, network
        self._networks: dict[str, QNetwork] = {}
        self._max_q: list[float] = []

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> "QRAGAgent":
        """The shipped model ``name`` (``qa1``..``qa5``, ``qa2-stage``, ``niah``, ...: :func:`qrag_agents.qrag.pretrained.available`) for every task."""
        return cls(model=str(pretrained_folder(name)), **kwargs)

    def _model_folders(self, task: str) -> list[Path]:
        """Where a model for ``task`` may be, in order of preference."""
        if self.model:
            return [Path(self.model)]
        names = [name + self.suffix for name in ([task, "niah"] if task in NIAH_VARIANTS else [task])]
        if self.models_dir is None:
            return [PRETRAINED_DIR / name for name in names]
        return [self.models_dir / name / "best" for name in names]

    def _folder_for(self, task: str) -> Path:
        """The model folder used for ``task`` (a bAbI task, ``hotpotqa`` or a NIAH variant's name)."""
        candidates = self._model_folders(task)
        folder = next((f for f in candidates if (f / "model.safetensors").is_file()), None)
        if folder is None:
            train = f"niah:{task}" if task in NIAH_VARIANTS else task
            command = (f"qrag-train --task {train} --out runs/{task}{self.suffix}"
                       + (f" --set candidate_stage=true stage_base=runs/{task}/best" if self.suffix else ""))
            raise FileNotFoundError(f"no trained Q-RAG model for {task} at {' or '.join(map(str, candidates))}: "
                                    f"train one with `{command}` and pass models_dir='runs' "
                                    f"(qrag-bench --qrag-models runs), or leave this agent out")
        return folder

    def check_task(self, task: str) -> None:
        """Raise now, with the command to fix it, if no model exists for a benchmark task."""
        if self._given is None and not self.model:
            self._folder_for(short_name(task))

    def settings_fingerprint(self, task: str) -> str:
        """A digest of the model weights and config this agent uses for ``task``: a cell's records depend on both
        (the config holds the Q-threshold stop, which decides the kept chunks)."""
        if self._given is not None:
            return "network in memory"
        folder = Path(self.model) if self.model else self._folder_for(short_name(task))
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes())
        digest.update((folder / "config.json").read_bytes())
        return digest.hexdigest()[:16]

    def _network_for(self, task: str) -> QNetwork:
        if self._given is not None:
            return self._given
        folder = self._folder_for(task)
        key = str(folder)
        if key not in self._networks:
            self._networks[key] = load_model(folder, device=self.device)
        return self._networks[key]

    def reset(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> None:
        self.network = self._network_for(info["task"])
        self._document = encode_document(self.network, document)
        self._chunks = self._document.chunks
        long_document = use_shortlist(self.shortlist, document.num_chunks)
        self._index = ChunkIndex(self._chunks.cpu().numpy()) if long_document else None
        self._max_q = []

    @torch.no_grad()
    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        question, texts, selected = document.question, document.texts, list(info["selected_order"])
        state = self._document.state(self.network, selected)  # by id (adapter build); None: from the texts
        if self._index is not None:
            found = shortlist_step(self.network, self._index, self._chunks, question, texts, selected,
                                   info["action_mask"], self.shortlist, state=state, asked=self._document.asked)
            action, value = found.action, found.value
        else:
            q = step_q_values(self.network, self._chunks, question, texts, selected, info["action_mask"], state=state,
                              asked=self._document.asked)
            action, value = int(q.argmax()), float(q[int(q.argmax())])
        self._max_q.append(value)
        return action

    def kept(self, info: dict[str, Any]) -> Sequence[int]:
        """The selections before the first step whose max-Q fell to the threshold."""
        threshold = self.network.config.q_threshold if self.threshold is None else self.threshold
        return keep_until_threshold(list(info["selected_order"]), self._max_q, threshold)


class StagedQRAGAgent(QRAGAgent):
    """Q-RAG with the candidate stage (beyond the paper): the ``<task>-stage`` models, shipped or in
    ``models_dir`` (``runs/qa2-stage/best``), each a stage trained on a frozen faithful model of its task (for qa2 the
    shipped ``qa2``; for qa1, qa4, qa5 the faithful run of the same two-thread pipeline; for qa3 one trained on
    generated stories as well, and its stage also reads the question and keeps its candidates above the others)."""

    suffix = "-stage"
