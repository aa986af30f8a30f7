"""Tiny hand-built fixtures: a Llama model of a few hundred thousand weights with its own BPE tokenizer and
SmolLM-style chat template, and a data directory with a few rows of every built-in task in its raw format."""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def build_tiny_model(target: Path, vocab_size: int = 400, hidden: int = 32, layers: int = 2) -> Path:
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
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_data_dir(root: Path, rows: int = 40) -> Path:
    """A data directory holding `rows` rows of every built-in task, each file in its raw published format."""
    rng = random.Random(1)

    def sentence(k: int = 6) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    coarse = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    for split, n in (("train", rows), ("dev", rows // 4), ("test", rows // 2)):
        _text(root / "sst2" / f"stsa.binary.{split}", [f"{i % 2} {sentence()} ." for i in range(n)])
    for split, n in (("train", rows), ("test", rows // 2)):
        _text(root / "trec" / f"{split}.txt", [f"{coarse[i % 6]}:other {sentence()} ?" for i in range(n)])
    for name, labels in (("rte", ["entailment", "not_entailment"]), ("cb", ["entailment", "contradiction", "neutral"])):
        for split, n in (("train", rows), ("val", rows // 2)):
            _jsonl(root / name / f"{split}.jsonl", [{"premise": sentence(10), "hypothesis": sentence(5),
                                                      "label": labels[i % len(labels)], "idx": i} for i in range(n)])
    for split, n in (("train", rows), ("test", rows // 2)):
        rows_ = []
        for i in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            rows_.append({"question": f"{sentence(4)} {a} and {b} how many ?",
                          "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"})
        _jsonl(root / "gsm8k" / f"{split}.jsonl", rows_)
    _jsonl(root / "boolq" / "test.jsonl", [{"query": f"Passage: {sentence(12)}\nQuestion: {sentence(4)}?",
                                            "choices": ["no", "yes"], "gold": i % 2} for i in range(rows)])
    _jsonl(root / "xsum" / "test.jsonl", [{"id": str(i), "document": sentence(30), "summary": sentence(6)}
                                          for i in range(rows)])
    _jsonl(root / "asdiv" / "test.jsonl", [{"passage": sentence(8), "question": "How many apples ?",
                                            "answer": f"{i % 9 + 1} apples"} for i in range(rows)])
    for name in ("arc_easy", "arc_challenge", "openbook_qa", "piqa"):
        n_choices = 2 if name == "piqa" else 4
        prefix = "Question: " if name != "openbook_qa" else ""
        _jsonl(root / name / "test.jsonl", [{"query": f"{prefix}{sentence(6)}?" + ("\n" if name == "piqa" else ""),
                                              "choices": [sentence(3) for _ in range(n_choices)],
                                              "gold": i % n_choices} for i in range(rows)])
    _jsonl(root / "commonsense_qa" / "test.jsonl", [
        {"query": f"Question: {sentence(6)}?\nChoices:\nA. {sentence(2)}\nB. {sentence(2)}\nC. {sentence(2)}\n"
                  f"D. {sentence(2)}\nAnswer:", "choices": ["A", "B", "C", "D"], "gold": i % 4} for i in range(rows)])
    wino = []
    for i in range(rows):
        stem = sentence(6)
        wino.append({"context_options": [f"{stem} so the sun", f"{stem} so the plant"],
                     "continuation": f"{sentence(4)}.", "gold": i % 2})
    _jsonl(root / "winogrande" / "test.jsonl", wino)
    _jsonl(root / "mmlu" / "test.jsonl", [
        {"question": f"{sentence(8)}?", "options": "A. one\nB. two\nC. three\nD. four",
         "answer": ["A. one", "B. two", "C. three", "D. four"][i % 4]} for i in range(rows)])
    return root
