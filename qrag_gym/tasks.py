"""Task names and what they mean: one place maps ``qa2``, ``niah:multivalue`` or ``hotpotqa`` to its env.

Three families share the retrieval MDP: BABILong ``qa1``..``qa5``, RULER NIAH ``niah:<variant>`` and
``hotpotqa``. Benchmarks, ``qrag-evaluate`` and training validation all build their envs through
:func:`env_kwargs`, and choose the held-out split with :func:`default_eval_split`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrag_gym.data.babi import TASKS as BABI_TASKS
from qrag_gym.data.babi import task_path
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.data.paths import find_data_subdir
from qrag_gym.validation import MAX_CONTEXT_TOKENS

NIAH_PREFIX = "niah:"
NIAH_ALL = "niah:all"
"""Training and ``qrag-evaluate`` alias: every NIAH variant with one model."""
FAMILIES = ("babilong", "niah", "hotpotqa")
ENV_IDS = {"babilong": "QRAG-Babilong-v0", "niah": "QRAG-NIAH-v0", "hotpotqa": "QRAG-HotpotQA-v0"}
READERS = {"babilong": "qrag_gym.readers.answer_babi (exact bAbI reader on the kept chunks, document order)",
           "niah": "qrag_gym.metrics.ruler_string_match of the gold values in the kept chunks' text (document order)",
           "hotpotqa": "none (needs an LLM reader): answer_correct is null, fact metrics only"}
TASK_NAMES = (*BABI_TASKS, *(NIAH_PREFIX + v for v in NIAH_VARIANTS), "hotpotqa")
"""Every task name the benchmarks accept."""

LENGTHS = {"1K": 1_000, "4K": 4_000, "32K": 32_000, "128K": 128_000, "1M": 1_000_000, "10M": 10_000_000}
"""Length labels of the paper's tables -> ``context_tokens``."""
NATURAL_LENGTH = "doc"
"""The length label of tasks with one natural length (HotpotQA): lengths asked for are ignored."""


def task_family(task: str) -> str:
    """``"qa2"`` -> ``"babilong"``, ``"niah:multivalue"`` -> ``"niah"``, ``"hotpotqa"`` -> ``"hotpotqa"``."""
    if task in BABI_TASKS:
        return "babilong"
    if task.startswith(NIAH_PREFIX) and task[len(NIAH_PREFIX):] in NIAH_VARIANTS:
        return "niah"
    if task == "hotpotqa":
        return "hotpotqa"
    raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASK_NAMES)}")


def family_of(task: str) -> str:
    """:func:`task_family`, also for the :data:`NIAH_ALL` alias."""
    return "niah" if task == NIAH_ALL else task_family(task)


def expand(task: str) -> list[str]:
    """The benchmark tasks a name stands for: :data:`NIAH_ALL` is every NIAH variant, others themselves."""
    return [NIAH_PREFIX + variant for variant in NIAH_VARIANTS] if task == NIAH_ALL else [task]


def short_name(task: str) -> str:
    """The name an episode's ``info["task"]`` carries: ``niah:multivalue`` -> ``multivalue``."""
    return task[len(NIAH_PREFIX):] if task.startswith(NIAH_PREFIX) else task


def has_lengths(task: str) -> bool:
    """False for a task with one natural document length (HotpotQA)."""
    return task_family(task) != "hotpotqa"


def env_kwargs(task: str, tokens: int | None, split: str) -> dict[str, Any]:
    """``gym.make`` keyword arguments of a task's env at ``tokens`` (ignored by HotpotQA)."""
    family = task_family(task)
    if family == "babilong":
        return {"task": task, "context_tokens": tokens, "split": split}
    if family == "niah":
        return {"variant": task[len(NIAH_PREFIX):], "context_tokens": tokens, "split": split}
    return {"split": split}


def parse_length(text: str) -> tuple[str, int]:
    """``"4K"`` -> ``("4K", 4000)``; also plain token counts (``"2500"``) and ``k``/``m`` suffixes."""
    label = str(text).strip().upper()
    if label in LENGTHS:
        return label, LENGTHS[label]
    scale = {"K": 1_000, "M": 1_000_000}.get(label[-1:], 1)
    digits = label[:-1] if scale > 1 else label
    try:
        tokens = int(float(digits) * scale)
    except (ValueError, OverflowError):  # "lots", "inf", "nan"
        raise ValueError(f"bad length {text!r}: use one of {', '.join(LENGTHS)} or a token count like 2500") from None
    if not 1 <= tokens <= MAX_CONTEXT_TOKENS:
        raise ValueError(f"bad length {text!r}: must be between 1 and {MAX_CONTEXT_TOKENS:,} tokens")
    return label, tokens


def default_eval_split(task: str, data_dir: str | Path | None = None) -> tuple[str, str | None]:
    """The split a task is reported on, and a notice when it is not the official test set.

    BABILong reports on the official bAbI test stories (with held-out books) whenever the data folder
    has them; otherwise it falls back to the validation stories of the training files. NIAH's
    documents are generated and HotpotQA's questions are dev questions, so their held-out split is
    ``validation``.
    """
    if task_family(task) != "babilong":
        return "validation", None
    babi_dir = find_data_subdir("babi/en-10k", data_dir)
    if babi_dir is not None and task_path(babi_dir, task, "test").is_file():
        return "test", None
    where = task_path(babi_dir, task, "test") if babi_dir is not None else "babi/en-10k/ (no data folder found)"
    return "validation", (f"notice: no official bAbI test file for {task} at {where}; reporting on the "
                          "validation stories of the training file instead")
