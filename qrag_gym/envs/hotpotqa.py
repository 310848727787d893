"""HotpotQA (distractor setting) as a retrieval MDP: pick the two supporting paragraphs among ten."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from qrag_gym.corpus import Corpus, TextTable, first_occurrences
from qrag_gym.data.hotpotqa import DEFAULT_FILE, DEFAULT_FILES, SPLIT_RULE, HotpotQuestion, load_hotpotqa, split_questions
from qrag_gym.data.paths import require_data_subdir
from qrag_gym.models import count_tokens, length_tokenizer
from qrag_gym.envs.retrieval import QuestionSetEnv
from qrag_gym.episode import Episode


def resolve_hotpotqa_file(path: str | Path | None, data_dir: str | Path | None) -> Path:
    """An explicit ``path``, else the first of :data:`DEFAULT_FILES` under the resolved data folder."""
    if path is not None:
        return Path(path).expanduser()
    folder = require_data_subdir(str(Path(DEFAULT_FILE).parent), data_dir)
    names = [Path(rel).name for rel in DEFAULT_FILES]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"found the folder {folder} but not {' or '.join(names)} in it; "
                            f"run `qrag-data fetch hotpotqa` or pass path=... to a jsonl file")


@lru_cache(maxsize=8)
def _cached_questions(path: str) -> tuple[HotpotQuestion, ...]:
    """Parse each file once per process (vector envs and both splits share it)."""
    return tuple(load_hotpotqa(path))


@lru_cache(maxsize=8)
def _cached_paragraphs(path: str) -> tuple[Corpus, dict[str, np.ndarray], dict[str, int]]:
    """The file's distinct paragraphs as one table (a paragraph shown with several questions has one id) and its
    distinct questions as a second, with each question's paragraphs as ids and its own id: an episode's
    features and token counts are gathered by id. Tokens are counted in one batched pass per table (counting
    them at every reset cost more than the rest of a training step)."""
    questions = _cached_questions(path)
    paragraphs = [chunk for question in questions for chunk in question.chunks]
    first, owner = first_occurrences(paragraphs)
    texts = [paragraphs[i] for i in first.tolist()]
    ends = np.cumsum([len(question.chunks) for question in questions])
    ids = {q.qid: owner[end - len(q.chunks): end] for q, end in zip(questions, ends)}
    first_asked, asked_owner = first_occurrences([question.question for question in questions])
    asked = [questions[i].question for i in first_asked.tolist()]
    question_ids = {q.qid: len(texts) + int(row) for q, row in zip(questions, asked_owner.tolist())}
    tokenizer = length_tokenizer()
    tables = (TextTable.of(texts, count_tokens(tokenizer, texts)), TextTable.of(asked, count_tokens(tokenizer, asked)))
    return Corpus(tables), ids, question_ids


class HotpotQAEnv(QuestionSetEnv):
    """``QRAG-HotpotQA-v0``: select the supporting paragraphs of a multi-hop question.

    ## Description
    One episode = one HotpotQA question in the distractor setting: its (usually ten) paragraphs, in
    file order, are the chunks (title + " " + text); the two paragraphs marked supporting are the
    supporting chunks. ``info["answers"]`` holds the gold answer(s) for a reader (score it with
    :func:`qrag_gym.metrics.answer_exact_match` / :func:`~qrag_gym.metrics.answer_f1`); fact F1/EM
    come from :func:`qrag_gym.metrics.retrieval_metrics`. Spaces, rewards and episode end are those of
    :class:`RetrievalEnv`.

    ## Arguments
    - ``split``: "train", "validation" (a fixed fifth of the questions, by question id; the rule is
      in ``info["split_rule"]``) or "all".
    - ``path``: a jsonl file (processed or official HotpotQA records); by default
      ``hotpotqa/dev_subsampled_400.jsonl`` (else ``hotpotqa/hotpot_dev_distractor_v1.jsonl``, what
      ``qrag-data fetch hotpotqa`` writes) under ``data_dir``, else ``$QRAG_DATA_DIR``, else the
      user data folder.
    - ``max_steps`` (default 2, the paper's T for HotpotQA); every other keyword (``reward``, ``penalize_extra_steps``,
      ``never_terminate``, ``invalid_action_penalty``, ``embedder``, ``render_mode``) is
      passed through to :class:`RetrievalEnv`.
    - ``max_chunks``: size of the action space; by default the most paragraphs of any question in the
      file, so every split has the same spaces.
    - Lengths are counted with :func:`~qrag_gym.models.length_tokenizer` whatever the ``embedder``.

    Episodes are drawn uniformly from the split; to walk a split in order, pass
    ``options={"question_index": i}`` to ``reset`` (``0 <= i < env.unwrapped.num_questions``).

    Paragraphs are long, so a model named by id/path embeds up to :attr:`embed_max_tokens` (256)
    tokens of each, not BABILong's 64 (the paper uses 220 with its e5 encoder).

    ## Version history
    - v0: first release.
    """

    embed_max_tokens = 256

    def __init__(
        self,
        split: str = "train",
        *,
        path: str | None = None,
        data_dir: str | None = None,
        max_chunks: int | None = None,
        max_steps: int = 2,
        **kwargs: Any,
    ) -> None:
        self.path = resolve_hotpotqa_file(path, data_dir)
        every = _cached_questions(str(self.path.resolve()))
        self.split = split
        self.questions = split_questions(list(every), split)
        if not self.questions:
            raise ValueError(f"{self.path} has no {split} questions ({SPLIT_RULE})")
        self._corpus, self._paragraph_ids, self._question_ids = _cached_paragraphs(str(self.path.resolve()))
        if max_chunks is None:
            max_chunks = max(len(q.paragraphs) for q in every)
        super().__init__(max_chunks, max_steps, **kwargs)

    def episode_at(self, index: int) -> Episode:
        """The episode of the split's ``index``-th question (file order)."""
        question = self.questions[index]
        ids = self._paragraph_ids[question.qid]
        return Episode(
            chunks=question.chunks,
            question=question.question,
            answer=question.answers[0],
            supporting_ids=question.supporting,
            source="hotpotqa",
            task="hotpotqa",
            num_tokens=int(self._corpus.tokens(ids).sum()),
            meta={"answers": list(question.answers), "qid": question.qid, "index": index},
            chunk_ids=ids,
            corpus=self._corpus,
            question_id=self._question_ids[question.qid],
        )

    @property
    def num_questions(self) -> int:
        return len(self.questions)

    def _episode_for_question(self, index: int) -> Episode:
        return self.episode_at(index)


    def _episode_info(self) -> dict[str, Any]:
        episode = self._require_episode()
        return {"answers": list(episode.meta.get("answers", [episode.answer])), "qid": episode.meta.get("qid"),
                "split": self.split, "split_rule": SPLIT_RULE}


__all__ = ["HotpotQAEnv", "resolve_hotpotqa_file"]
