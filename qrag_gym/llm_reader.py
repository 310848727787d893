"""An optional generative reader: answer an episode's question from the retrieved chunks with a local HF model.

Q-RAG scores retrieval by what an LLM answers from the few chunks it retrieved. We
follow that protocol: the kept chunks are re-sorted into document order (bAbI facts only make sense in
story order), put into a BABILong-style prompt (instruction, one worked example, answer format, the
context, the question) for bAbI and NIAH, or into an open-QA prompt that asks for a closing
"Final answer: ..." line for HotpotQA; decoding is greedy. Any local causal or encoder-decoder model
works (``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM``); a chat template is used when the
tokenizer has one. Score the answer with :mod:`qrag_gym.metrics` (``ruler_string_match`` for NIAH,
``answer_exact_match`` / ``answer_f1`` for HotpotQA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from qrag_gym.data.babi import TASKS as BABI_TASKS
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.episode import Episode

SYSTEM_PROMPT = "You are a careful assistant that answers questions using only the context you are given."


@dataclass(frozen=True)
class TaskPrompt:
    """BABILong's prompt parts: what to do, one worked example, and the exact answer format."""

    instruction: str
    example: str
    answer_format: str


BABI_PROMPTS = {
    "qa1": TaskPrompt(
        "The context holds facts about where people are, hidden among unrelated text. Answer the question "
        "from those facts only. When a person moved several times, the last move counts.",
        "Mary went to the garden. John moved to the office. Mary travelled to the kitchen.\n"
        "Question: Where is Mary?\nAnswer: The most recent location of Mary is kitchen.",
        "Reply in the form 'The most recent location of <person> is <location>.' and write nothing after it.",
    ),
    "qa2": TaskPrompt(
        "The context holds facts about people moving and picking up or dropping objects, hidden among "
        "unrelated text. An object is where the person who last carried it went. Answer from those facts only.",
        "John picked up the apple. John went to the hallway. Mary moved to the bathroom.\n"
        "Question: Where is the apple?\nAnswer: The apple is in hallway.",
        "Reply in the form 'The <object> is in <location>.' and write nothing after it.",
    ),
    "qa3": TaskPrompt(
        "The context holds facts about people moving and carrying objects, hidden among unrelated text. "
        "Follow the object through the places it was carried. Answer from those facts only.",
        "John took the football. John went to the garden. John journeyed to the kitchen.\n"
        "Question: Where was the football before the kitchen?\nAnswer: Before the kitchen the football was in garden.",
        "Reply in the form 'Before the <place> the <object> was in <location>.' and write nothing after it.",
    ),
    "qa4": TaskPrompt(
        "The context holds facts about how places lie relative to each other, hidden among unrelated text. "
        "Answer from those facts only.",
        "The kitchen is west of the garden. The hallway is north of the garden.\n"
        "Question: What is the garden east of?\nAnswer: The answer is kitchen.",
        "Reply in the form 'The answer is <one word>.' and write nothing after it.",
    ),
    "qa5": TaskPrompt(
        "The context holds facts about people giving objects to each other, hidden among unrelated text. "
        "Answer from those facts only.",
        "Mary gave the cake to Fred. Fred handed the cake to Bill. Jeff went to the garden.\n"
        "Question: Who gave the cake to Bill?\nAnswer: The answer is Fred.",
        "Reply in the form 'The answer is <one word>.' and write nothing after it.",
    ),
}

NIAH_PROMPT = TaskPrompt(
    "Some special magic values are hidden in the context. Find the ones the question asks for.",
    "One of the special magic numbers for quiet-otter is: 4721953. The sky is blue.\n"
    "Question: What is the special magic number for quiet-otter mentioned in the provided text?\n"
    "Answer: The special magic number for quiet-otter is 4721953.",
    "Give every value asked for and write nothing else.",
)

OPEN_QA_INSTRUCTION = (
    "Answer the question using the paragraphs below. You may reason step by step, then end your reply "
    "with one line 'Final answer: <short answer>'. The short answer is a few words, a name, a date, "
    "a number, or yes/no."
)
OPEN_QA_SEPARATOR = "\n\n---\n\n"
FINAL_ANSWER = re.compile(r"final answer\s*:\s*(.*)", re.IGNORECASE)

DEFAULT_MAX_NEW_TOKENS = {"babi": 32, "niah": 128, "openqa": 512}
"""bAbI answers are one sentence; RULER generates 128 tokens for NIAH; open QA leaves room to reason."""


def task_kind(task: str) -> str:
    """Which prompt family serves an episode's ``task``: 'babi', 'niah' or 'openqa'."""
    if task in BABI_TASKS:
        return "babi"
    if task in NIAH_VARIANTS:
        return "niah"
    if task == "hotpotqa":
        return "openqa"
    raise ValueError(f"no reader prompt for task {task!r}; known: {', '.join(BABI_TASKS + tuple(NIAH_VARIANTS))}, hotpotqa")


def document_order(chunks: Sequence[str], selected: Iterable[int]) -> list[str]:
    """The selected chunks re-sorted by position in the document (duplicates dropped)."""
    return [chunks[i] for i in sorted(set(int(i) for i in selected))]


def build_prompt(task: str, question: str, context: Sequence[str]) -> str:
    """The user prompt for one question over context chunks that are already in document order."""
    kind = task_kind(task)
    if kind == "openqa":
        return f"{OPEN_QA_INSTRUCTION}\n\n{OPEN_QA_SEPARATOR.join(context)}\n\nQuestion: {question}"
    parts = BABI_PROMPTS[task] if kind == "babi" else NIAH_PROMPT
    return (f"{parts.instruction}\n\n<example>\n{parts.example}\n</example>\n\n{parts.answer_format}\n\n"
            f"<context>\n{' '.join(context)}\n</context>\n\nQuestion: {question}")


def parse_answer(task: str, generated: str) -> str:
    """The answer inside a generation.

    bAbI: the last word of the first non-empty line, without punctuation (what BABILong's format puts
    last). HotpotQA: the text after the last "Final answer:" (else the last non-empty line). NIAH: the
    whole generation, since RULER scores containment of each value.
    """
    kind = task_kind(task)
    text = generated.strip()
    if kind == "niah" or not text:
        return text
    if kind == "babi":
        words = text.splitlines()[0].split()
        return words[-1].strip(".,;:!?'\"") if words else ""
    finals = FINAL_ANSWER.findall(text)  # the rest of the line after each "Final answer:"
    return finals[-1].strip() if finals else text.splitlines()[-1].strip()


@dataclass(frozen=True)
class ReaderOutput:
    """What the reader saw and said: the full model input, the raw generation and the parsed answer."""

    prompt: str
    generated: str
    answer: str


class GenerativeReader:
    """Greedy answers from a local Hugging Face model (causal LM or encoder-decoder).

    Args:
        model: a local folder (or a hub id on machines with network) loadable by ``from_pretrained``.
        max_new_tokens: generation budget; ``None`` picks :data:`DEFAULT_MAX_NEW_TOKENS` by task.
        thinking: passed to chat templates as ``enable_thinking`` (Qwen3 style); off as in the paper.
        device, dtype: where and in which precision the model runs.
    """

    def __init__(self, model: str, max_new_tokens: int | None = None, thinking: bool = False,
                 device: str = "cpu", dtype: torch.dtype | None = None) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        config = AutoConfig.from_pretrained(model)
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        loader = AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM
        precision = {} if dtype is None else {"dtype": dtype}
        self.model = loader.from_pretrained(model, **precision).to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.thinking = thinking

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def model_input(self, prompt: str) -> str:
        """The prompt as the model sees it: through the chat template when the tokenizer has one."""
        if not self.uses_chat_template:
            return f"{SYSTEM_PROMPT}\n\n{prompt}\n\nAnswer:"
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=self.thinking)

    @torch.inference_mode()
    def generate(self, text: str, max_new_tokens: int) -> str:
        """Greedy continuation of ``text`` (only the new tokens, decoded)."""
        # a rendered chat template already holds its special tokens; a plain prompt needs the model's own
        batch = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.uses_chat_template)
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        output = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        new = output[0] if self.is_encoder_decoder else output[0, batch["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def read(self, episode: Episode, selected: Iterable[int]) -> ReaderOutput:
        """Answer ``episode``'s question from the ``selected`` chunk ids (any order; read in document order)."""
        prompt = self.model_input(build_prompt(episode.task, episode.question, document_order(episode.chunks, selected)))
        budget = self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task_kind(episode.task)]
        generated = self.generate(prompt, budget)
        return ReaderOutput(prompt, generated, parse_answer(episode.task, generated))
