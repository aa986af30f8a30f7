"""A tiny random Llama with its own byte-level BPE tokenizer and a SmolLM-style chat template.

It is what the `smoke` study preset and the test suite train and evaluate: seconds per step on a CPU, no
download. Its scores mean nothing; it exercises every code path.
"""

from __future__ import annotations

import random
from pathlib import Path

TINY_MODEL = "tiny-random-llama"

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the a movie film good bad great awful plot actor question answer what who where when how many is was "
         "are were true false neither yes no review sentiment positive negative premise hypothesis passage "
         "document summary number apples balls has have more than and of to in on for with abbreviation entity "
         "description human location science water sun plant energy city team people money dollars").split()


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]
    lines += ["0123456789 + - * / = ? ! . , : ; # < > ( ) ' \" $ %", "Question: Answer: Review: Sentiment:"]
    return lines


def build_tiny_model(target: Path, vocab_size: int = 400, hidden: int = 64, layers: int = 2, heads: int = 2,
                     kv_heads: int | None = None, intermediate: int | None = None, embedding_rows: int = 0) -> Path:
    """A tiny LlamaForCausalLM and fast tokenizer (byte-level BPE, so any text tokenizes) saved to `target`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    # `embedding_rows` pads the vocabulary (unused rows) to give the model a real model's head size.
    config = LlamaConfig(vocab_size=max(len(fast), embedding_rows), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         max_position_embeddings=4096, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target
