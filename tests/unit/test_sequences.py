"""The sequence builder: labels from segments, trained spans per method, whole-example packing, rows and budgets."""

from __future__ import annotations

import random

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import TrainConfig
from manyicl.tasks.registry import Example, TaskData, load_examples, load_task
from manyicl.train.sequences import (
    IGNORE_INDEX,
    METHODS,
    Budget,
    Renderer,
    Row,
    TrainingSequence,
    assemble,
    build_labels,
    chat_frame,
    pack_rows,
    pack_task,
    select_rows,
    sequence_cost,
    trained_spans,
)

END = "<|im_end|>"  # the tiny tokenizer's end-of-turn token, which is also its EOS


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def chat(tokenizer) -> Renderer:
    return Renderer(tokenizer, "chat")


@pytest.fixture(scope="module")
def plain(tokenizer) -> Renderer:
    return Renderer(tokenizer, "plain")


def _examples(n: int, seed: int = 0, words: tuple[int, int] = (3, 12)) -> list[Example]:
    rng = random.Random(seed)
    vocab = "the a movie film good bad great awful plot actor was is and of to with people money".split()
    out = []
    for i in range(n):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(*words)))
        out.append(Example(uid=f"sst2:train:{i}", input=f"Review: {text} .\nSentiment:",
                           answer=("negative", "positive")[i % 2], choices=("negative", "positive"), gold=i % 2))
    return out


def _task_data(examples: list[Example]) -> TaskData:
    return TaskData(task=load_task("sst2"), train=tuple(examples), test=(), source="hand-written")


# --------------------------------------------------------------------------- build_labels, trained_spans


def test_build_labels_copies_trained_segments_and_masks_the_rest():
    ids, labels = build_labels([([1, 2], False), ([3, 4], True), ([], True), ([5], False), ([6, 7, 8], True)])
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert labels == [-100, -100, 3, 4, -100, 6, 7, 8]


def test_build_labels_edge_cases():
    assert build_labels([]) == ([], [])
    assert build_labels([([9, 9], False)]) == ([9, 9], [-100, -100])
    assert build_labels([([0], True), ([0], False)]) == ([0, 0], [0, -100])  # token id 0 is a real label


def test_trained_spans():
    assert trained_spans([-100, 5, 6, -100, -100, 7]) == [(1, 3), (5, 6)]
    assert trained_spans([4, 4, -100]) == [(0, 2)]
    assert trained_spans([-100, -100]) == []
    assert trained_spans([]) == []
    assert trained_spans([0, -100, 0]) == [(0, 1), (2, 3)]  # id 0 is trained, not ignored
    assert trained_spans([1, 2, 3]) == [(0, 3)]


# --------------------------------------------------------------------------- the chat frame


def _conversation(examples: list[Example]) -> list[dict]:
    turns = []
    for ex in examples:
        turns += [{"role": "user", "content": ex.input}, {"role": "assistant", "content": ex.answer}]
    return turns


def test_chat_frame_reproduces_the_template_for_a_multi_turn_conversation(tokenizer, chat):
    examples = _examples(3)
    f = chat.frame
    built = f.header + f.sep.join(ex.input + f.mid + ex.answer + f.close for ex in examples) + f.tail
    assert built == tokenizer.apply_chat_template(_conversation(examples), tokenize=False)
    assert f.close == END


def test_renderer_prompt_equals_the_generation_prompt_of_the_template(tokenizer, chat):
    demos = _examples(4)
    query = "Review: a great plot .\nSentiment:"
    expected = tokenizer.apply_chat_template(_conversation(demos) + [{"role": "user", "content": query}],
                                             tokenize=False, add_generation_prompt=True)
    assert chat.prompt(demos, query) == expected
    zero = tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.prompt([], query) == zero


def test_plain_prompt_layout(plain):
    demos = _examples(2)
    prompt = plain.prompt(demos, "Review: bad .\nSentiment:")
    assert prompt == (f"{demos[0].input} {demos[0].answer}{END}\n\n{demos[1].input} {demos[1].answer}{END}\n\n"
                      "Review: bad .\nSentiment:")
    assert plain.answer_text("positive") == " positive"


def _fresh_tokenizer(tiny_model, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template, message", [
    (None, "no chat template"),
    ("{% for m in messages %}{{ m['content'] | lower }}<|im_end|>{% endfor %}", "rewrites message contents"),
    ("{% for m in messages %}{% if loop.index0 == 1 %}A: {% else %}B: {% endif %}{{ m['content'] }}<|im_end|>"
     "{% endfor %}{% if add_generation_prompt %}A: {% endif %}", "not the same for every turn"),
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "no special token"),
])
def test_chat_frame_refuses_templates_it_cannot_pack(tiny_model, template, message):
    with pytest.raises(HarnessError, match=message):
        chat_frame(_fresh_tokenizer(tiny_model, template))


def test_renderer_rejects_unknown_format(tokenizer):
    with pytest.raises(HarnessError, match="Unknown format"):
        Renderer(tokenizer, "markdown")


# --------------------------------------------------------------------------- assemble, token by token


def _char_ranges(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Where each piece occurs in `text`, searching left to right."""
    ranges, at = [], 0
    for piece in pieces:
        start = text.index(piece, at)
        ranges.append((start, start + len(piece)))
        at = start + len(piece)
    return ranges


def _expected_trained(tokenizer, input_ids: list[int], text: str, trained: list[tuple[int, int]]) -> list[bool]:
    """Independent oracle: a token is trained iff its characters lie inside a trained character range."""
    flags, at = [], 0
    for token in input_ids:
        piece = tokenizer.decode([token])
        start, end = at, at + len(piece)
        assert text[start:end] == piece
        inside = [a <= start and end <= b for a, b in trained]
        overlap = [start < b and a < end for a, b in trained]
        assert any(inside) == any(overlap), f"token {piece!r} straddles a trained boundary"
        flags.append(any(inside))
        at = end
    assert at == len(text)
    return flags


def _layout(fmt: str, tokenizer, examples: list[Example]) -> tuple[str, list[str], list[str]]:
    """The full text of a sequence, its answer pieces (with the end token) and its inputs, built without Frame."""
    if fmt == "chat":
        text = tokenizer.apply_chat_template(_conversation(examples), tokenize=False)
        answers = [ex.answer + END for ex in examples]
    else:
        text = "\n\n".join(f"{ex.input} {ex.answer}{END}" for ex in examples)
        answers = [f" {ex.answer}{END}" for ex in examples]
    return text, answers, [ex.input for ex in examples]


@pytest.mark.parametrize("fmt", ["chat", "plain"])
@pytest.mark.parametrize("method", METHODS)
def test_assemble_trains_exactly_the_right_tokens(tokenizer, fmt, method):
    renderer = Renderer(tokenizer, fmt)
    examples = _examples(1 if method == "zero-shot" else 4, seed=3)
    seq = assemble("sst2", renderer.tokenize_examples(examples), renderer, method)

    text, answers, inputs = _layout(fmt, tokenizer, examples)
    assert tokenizer.decode(seq.input_ids) == text
    answer_ranges = _char_ranges(text, [p for pair in zip(inputs, answers, strict=True) for p in pair])[1::2]
    input_ranges = _char_ranges(text, [p for pair in zip(inputs, answers, strict=True) for p in pair])[0::2]
    if method in ("manyicl", "manyicl-full"):
        trained_ranges = list(answer_ranges)
    else:
        trained_ranges = answer_ranges[-1:]
    if method == "manyicl-full":
        trained_ranges += input_ranges
    expected = _expected_trained(tokenizer, seq.input_ids, text, trained_ranges)

    assert len(seq.labels) == len(seq.input_ids)
    for i, (token, label, trained) in enumerate(zip(seq.input_ids, seq.labels, expected, strict=True)):
        assert label == (token if trained else IGNORE_INDEX), f"position {i} ({tokenizer.decode([token])!r})"

    n_targets = len(examples) if method in ("manyicl", "manyicl-full") else 1
    assert seq.num_targets == n_targets == len(seq.target_spans)
    assert seq.num_examples == len(examples)
    assert seq.example_uids == [ex.uid for ex in examples]
    span_texts = [tokenizer.decode(seq.input_ids[a:b]) for a, b in seq.target_spans]
    assert span_texts == answers[-n_targets:]
    if method != "manyicl-full":
        assert trained_spans(seq.labels) == seq.target_spans
    else:
        trained_text = "".join(tokenizer.decode([t]) for t, lab in zip(seq.input_ids, seq.labels, strict=True)
                               if lab != IGNORE_INDEX)
        expected_text = "".join(inp + ans for inp, ans in zip(inputs, answers, strict=True))
        assert trained_text == expected_text


def test_answer_spans_decode_to_answer_and_end_token(tokenizer, chat, plain):
    examples = _examples(5, seed=9)
    for renderer, prefix in ((chat, ""), (plain, " ")):
        seq = assemble("sst2", renderer.tokenize_examples(examples), renderer, "manyicl")
        assert [tokenizer.decode(seq.input_ids[a:b]) for a, b in seq.target_spans] == \
            [prefix + ex.answer + END for ex in examples]
        for _, b in seq.target_spans:
            assert seq.input_ids[b - 1] == tokenizer.eos_token_id
            assert seq.labels[b - 1] == tokenizer.eos_token_id  # the model learns to stop


def test_assemble_rejects_unknown_method(chat):
    with pytest.raises(HarnessError, match="Unknown method"):
        assemble("sst2", chat.tokenize_examples(_examples(2)), chat, "sometimes-shot")


# --------------------------------------------------------------------------- whole-example packing


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i:i + len(needle)] == needle:
            return i
    return -1


def _assert_examples_intact(seq: TrainingSequence, by_uid: dict) -> None:
    at = 0
    for uid in seq.example_uids:
        ex = by_uid[uid]
        pos = _find(seq.input_ids, ex.input_ids, at)
        assert pos >= 0, f"input of {uid} is not whole in its sequence"
        pos = _find(seq.input_ids, ex.answer_ids, pos + len(ex.input_ids))
        assert pos >= 0, f"answer of {uid} is not whole in its sequence"
        at = pos + len(ex.answer_ids)


@pytest.fixture(scope="module")
def mixed_data() -> TaskData:
    """60 short examples and 3 examples far longer than the sequences below."""
    examples = _examples(60, seed=5)
    long_text = "Review: " + " ".join(["the awful plot of the film"] * 40) + "\nSentiment:"
    examples += [Example(uid=f"sst2:train:{60 + i}", input=long_text + " " * i, answer="negative",
                         choices=("negative", "positive"), gold=0) for i in range(3)]
    return _task_data(examples)


@pytest.mark.parametrize("fmt", ["chat", "plain"])
@pytest.mark.parametrize("method", ["zero-shot", "many-shot-last", "manyicl", "manyicl-full"])
def test_pack_task_keeps_examples_whole_and_within_max_len(tokenizer, mixed_data, fmt, method):
    renderer = Renderer(tokenizer, fmt)
    max_len = 160
    packing = pack_task(mixed_data, renderer, method, max_len, seed=7)
    by_uid = {t.uid: t for t in renderer.tokenize_examples(mixed_data.train)}
    long_uids = {f"sst2:train:{60 + i}" for i in range(3)}

    assert packing.skipped_too_long == 3
    assert packing.sequences
    uids = [u for s in packing.sequences for u in s.example_uids]
    assert len(uids) == len(set(uids)), "an example appears twice in one pass"
    assert set(uids) == set(by_uid) - long_uids, "every example that fits is used, the too-long ones are not"
    for seq in packing.sequences:
        assert seq.num_tokens <= max_len
        _assert_examples_intact(seq, by_uid)
    if method == "zero-shot":
        assert all(s.num_examples == 1 for s in packing.sequences)
    else:
        assert max(s.num_examples for s in packing.sequences) > 1
        mid = len(renderer.ids(renderer.frame.mid))
        for seq, nxt in zip(packing.sequences, packing.sequences[1:], strict=False):  # greedy: the next example did not fit
            first = by_uid[nxt.example_uids[0]]
            assert seq.num_tokens + len(first.sep_ids) + len(first.input_ids) + mid + len(first.answer_ids) > max_len


@pytest.mark.parametrize("shots", [1, 3, 5])
def test_few_shot_groups_have_shots_plus_one_examples(tokenizer, chat, shots):
    data = _task_data(_examples(40, seed=2))
    packing = pack_task(data, chat, "few-shot", 4096, seed=1, shots=shots)
    assert len(packing.sequences) == 40 // (shots + 1)
    uids = [u for s in packing.sequences for u in s.example_uids]
    assert len(uids) == len(set(uids)), "a demonstration or target is used twice in one pass"
    for seq in packing.sequences:
        assert seq.num_examples == shots + 1
        assert seq.num_targets == 1
        last = seq.target_spans[0]
        assert tokenizer.decode(seq.input_ids[last[0]:last[1]]).endswith(END)
        assert trained_spans(seq.labels) == [last]
        assert last[1] >= seq.num_tokens - 2  # only the tail follows the one target


def test_few_shot_drops_leading_demonstrations_when_the_group_does_not_fit(tokenizer, chat):
    data = _task_data(_examples(30, seed=4, words=(10, 14)))
    by_uid = {t.uid: t for t in chat.tokenize_examples(data.train)}
    packing = pack_task(data, chat, "few-shot", 130, seed=1, shots=5)
    assert packing.sequences
    assert all(s.num_tokens <= 130 for s in packing.sequences)
    assert max(s.num_examples for s in packing.sequences) < 6
    for seq in packing.sequences:
        assert seq.num_targets == 1
        _assert_examples_intact(seq, by_uid)
    full = pack_task(data, chat, "few-shot", 4096, seed=1, shots=5)
    for cut, whole in zip(packing.sequences, full.sequences, strict=True):
        assert whole.example_uids[-len(cut.example_uids):] == cut.example_uids  # the target is kept


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_an_example_that_exactly_fills_max_len_is_kept_and_one_token_more_is_skipped(tokenizer, fmt):
    renderer = Renderer(tokenizer, fmt)
    examples = _examples(3, seed=1, words=(12, 12))
    data = _task_data(examples)
    seqs = [assemble("sst2", [t], renderer, "zero-shot") for t in renderer.tokenize_examples(examples)]
    longest = max(s.num_tokens for s in seqs)
    n_longest = sum(s.num_tokens == longest for s in seqs)
    packing = pack_task(data, renderer, "zero-shot", longest, seed=0)
    assert packing.skipped_too_long == 0 and len(packing.sequences) == 3
    assert max(s.num_tokens for s in packing.sequences) == longest
    assert n_longest < 3, "the examples should differ in length"
    packing = pack_task(data, renderer, "zero-shot", longest - 1, seed=0)
    assert packing.skipped_too_long == n_longest
    assert len(packing.sequences) == 3 - n_longest


def test_few_shot_needs_a_shot(chat):
    with pytest.raises(HarnessError, match="--shots"):
        pack_task(_task_data(_examples(4)), chat, "few-shot", 512, seed=0, shots=0)


def test_pack_task_refuses_when_every_example_is_too_long(chat):
    with pytest.raises(HarnessError, match="longer than --max-seq-len 20"):
        pack_task(_task_data(_examples(5, words=(20, 30))), chat, "manyicl", 20, seed=0)


def test_pack_task_rejects_unknown_method(chat):
    with pytest.raises(HarnessError, match="Unknown method"):
        pack_task(_task_data(_examples(4)), chat, "allshot", 512, seed=0)


def test_pack_task_order_depends_on_seed_only(chat):
    data = _task_data(_examples(30, seed=8))
    a = pack_task(data, chat, "zero-shot", 512, seed=11)
    b = pack_task(data, chat, "zero-shot", 512, seed=11)
    c = pack_task(data, chat, "zero-shot", 512, seed=12)
    order = [s.example_uids[0] for s in a.sequences]
    assert order == [s.example_uids[0] for s in b.sequences]
    assert order != [s.example_uids[0] for s in c.sequences]
    assert sorted(order) == sorted(s.example_uids[0] for s in c.sequences)


def test_pack_task_max_examples_caps_the_pool(chat):
    data = _task_data(_examples(30, seed=8))
    packing = pack_task(data, chat, "manyicl", 4096, seed=0, max_examples=7)
    assert sum(s.num_examples for s in packing.sequences) == 7


def test_pack_task_accepts_pretokenized_examples(chat):
    data = _task_data(_examples(20, seed=6))
    a = pack_task(data, chat, "manyicl", 200, seed=3)
    b = pack_task(data, chat, "manyicl", 200, seed=3, tokenized=chat.tokenize_examples(data.train))
    assert [s.input_ids for s in a.sequences] == [s.input_ids for s in b.sequences]
    assert [s.labels for s in a.sequences] == [s.labels for s in b.sequences]


# --------------------------------------------------------------------------- rows


def _seq(n_tokens: int, targets: int = 1, task: str = "t", start: int = 0) -> TrainingSequence:
    ids = list(range(start, start + n_tokens))
    labels = [IGNORE_INDEX] * (n_tokens - 1) + [ids[-1]]
    return TrainingSequence(task=task, input_ids=ids, labels=labels, num_examples=targets, num_targets=targets,
                            target_spans=[(n_tokens - 1, n_tokens)])


def test_pack_rows_places_sequences_side_by_side_in_order():
    seqs = [_seq(40, start=0), _seq(50, start=100, task="u"), _seq(30, start=200), _seq(100, start=300),
            _seq(10, start=500, targets=3)]
    rows = pack_rows(seqs, 100)
    assert [r.seq_lengths for r in rows] == [[40, 50], [30], [100], [10]]
    assert all(r.num_tokens <= 100 for r in rows)
    assert [i for r in rows for i in r.input_ids] == [i for s in seqs for i in s.input_ids]
    assert [lab for r in rows for lab in r.labels] == [lab for s in seqs for lab in s.labels]
    assert rows[0].tasks == ["t", "u"]
    assert rows[3].num_targets == 3 and rows[3].num_examples == 3
    assert all(sum(r.seq_lengths) == r.num_tokens for r in rows)


def test_pack_rows_fills_a_row_exactly_to_max_len():
    rows = pack_rows([_seq(60), _seq(40), _seq(1)], 100)
    assert [r.seq_lengths for r in rows] == [[60, 40], [1]]


def test_pack_rows_empty():
    assert pack_rows([], 100) == []


# --------------------------------------------------------------------------- budgets


def _row(tokens: int, targets: int = 1) -> Row:
    return Row(input_ids=[1] * tokens, labels=[1] * tokens, seq_lengths=[tokens], num_targets=targets,
               num_examples=targets, tasks=["t"])


def _forever(rows: list[Row]):
    while True:
        yield list(rows)


def test_budget_needs_a_positive_limit():
    with pytest.raises(HarnessError, match="budget"):
        Budget()
    with pytest.raises(HarnessError, match="--max-tokens must be at least 1"):
        Budget(max_tokens=0)
    with pytest.raises(HarnessError, match="--max-steps must be at least 1"):
        Budget(max_steps=-2)


def test_max_steps_gives_exactly_that_many_steps():
    rows = [_row(10) for _ in range(20)]
    chosen, epochs = select_rows(_forever(rows), Budget(max_steps=3, rows_per_step=4))
    assert len(chosen) == 12 and epochs == 1


def test_epochs_cycle_when_the_data_runs_out():
    rows = [_row(10, targets=2) for _ in range(4)]
    chosen, epochs = select_rows(_forever(rows), Budget(max_steps=10))
    assert len(chosen) == 10 and epochs == 3


@pytest.mark.parametrize("limit", [95, 100, 105, 119])
def test_max_tokens_is_never_exceeded_and_rounded_to_whole_steps(limit):
    rows = [_row(10) for _ in range(50)]
    chosen, _ = select_rows(_forever(rows), Budget(max_tokens=limit, rows_per_step=4))
    tokens = sum(r.num_tokens for r in chosen)
    assert tokens <= limit
    assert len(chosen) % 4 == 0
    assert len(chosen) == (limit // 10) // 4 * 4


def test_max_targets_is_never_exceeded():
    rows = [_row(10, targets=3) for _ in range(50)]
    chosen, _ = select_rows(_forever(rows), Budget(max_targets=20, rows_per_step=2))
    assert sum(r.num_targets for r in chosen) <= 20
    assert len(chosen) == 6  # 6 rows = 18 targets; a 7th would exceed, and 6 is a whole number of steps


def test_first_limit_reached_wins():
    rows = [_row(10, targets=1) for _ in range(50)]
    chosen, _ = select_rows(_forever(rows), Budget(max_steps=30, max_tokens=1000, max_targets=5))
    assert len(chosen) == 5
    chosen, _ = select_rows(_forever(rows), Budget(max_steps=4, max_tokens=1000, max_targets=50))
    assert len(chosen) == 4


def test_budget_smaller_than_one_step_is_refused():
    rows = [_row(10) for _ in range(8)]
    with pytest.raises(HarnessError, match="smaller than one optimizer step"):
        select_rows(_forever(rows), Budget(max_tokens=9))
    with pytest.raises(HarnessError, match="smaller than one optimizer step"):
        select_rows(_forever(rows), Budget(max_tokens=35, rows_per_step=4))


def test_no_rows_at_all_is_refused():
    with pytest.raises(HarnessError):
        select_rows(_forever([]), Budget(max_steps=2))


@pytest.mark.parametrize("budget", [Budget(max_steps=10**9), Budget(max_tokens=10**12),
                                    Budget(max_targets=10**11, max_steps=10**10)])
def test_a_budget_beyond_memory_is_refused_after_the_first_epoch(budget):
    # 4 rows of 10 tokens an epoch; 64 bytes a token: 10**9 rows would need 640 GB, far beyond the 1 GiB given.
    rows = [_row(10, targets=1) for _ in range(4)]
    epochs_built = []

    def counted():
        for epoch in _forever(rows):
            epochs_built.append(1)
            yield epoch

    with pytest.raises(HarnessError, match=r"The budget asks for about [\d,]+ training rows .* GiB is available"):
        select_rows(counted(), budget, memory_bytes=2**30)
    assert len(epochs_built) == 1  # refused before a second epoch was built


def test_a_budget_within_memory_is_taken():
    # 100 rows x 10 tokens x 64 bytes = 64 KB: fits in half of 1 MiB
    rows = [_row(10, targets=1) for _ in range(4)]
    chosen, epochs = select_rows(_forever(rows), Budget(max_steps=100), memory_bytes=2**20)
    assert len(chosen) == 100 and epochs == 25
    with pytest.raises(HarnessError, match="about 2,000 training rows"):  # 1.28 MB > half of 256 KiB
        select_rows(_forever(rows), Budget(max_steps=2000), memory_bytes=2**18)


# --------------------------------------------------------------------------- the training data of a run


def test_build_training_data_respects_the_budget(tokenizer, tiny_data, chat):
    from manyicl.train.trainer import build_training_data

    datasets = [load_examples(load_task(name), tiny_data) for name in ("sst2", "rte")]
    cfg = TrainConfig(method="manyicl", tasks=["sst2", "rte"], max_seq_len=200, max_tokens=1500, batch_size=2,
                      grad_accum=1)
    data = build_training_data(cfg, chat, datasets)
    stats = data.stats()
    assert stats["tokens"] <= 1500
    assert len(data.rows) % 2 == 0 and data.steps == len(data.rows) // 2
    assert all(r.num_tokens <= 200 for r in data.rows)
    assert set(stats["per_task"]) == {"sst2", "rte"}
    assert stats["targets"] == sum(r.num_targets for r in data.rows)

    cfg = TrainConfig(method="zero-shot", tasks=["sst2"], max_seq_len=200, max_steps=100, batch_size=1)
    many = build_training_data(cfg, chat, datasets[:1])
    assert len(many.rows) == 100
    assert many.epochs > 1, "more steps than one pass over the data start a second epoch"
    first_pass = many.stats()["per_task"]["sst2"]["sequences_per_epoch"]
    assert first_pass == len(datasets[0].train)


# --------------------------------------------------------------------------- training agrees with evaluation


@pytest.fixture(scope="module")
def blank_line_tokenizer():
    """A byte-level BPE that, like SmolLM2's, makes a blank line one token alone but two before text (the
    pre-tokenizer splits `\\n\\nReview` into `\\n`, `\\n`, `Review`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Review: {' '.join(ex.input.split()[1:-1])} .\n\n" for ex in _examples(200, seed=4)] + ["\n\n"] * 50
    tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<|endoftext|>")


@pytest.mark.parametrize("which, fmt", [("blank_line", "plain"), ("tiny", "plain"), ("tiny", "chat")])
def test_training_sequence_tokenizes_exactly_like_the_evaluation_prompt(which, fmt, blank_line_tokenizer, tokenizer):
    tok = blank_line_tokenizer if which == "blank_line" else tokenizer
    if which == "blank_line":  # the tokenizer reproduces the trap the test is about
        assert len(tok("\n\n", add_special_tokens=False).input_ids) == 1
        assert len(tok(f"{END}\n\nReview", add_special_tokens=False).input_ids) == 4
    renderer = Renderer(tok, fmt)
    examples = _examples(6, seed=11)
    tokenized = renderer.tokenize_examples(examples)
    seq = assemble("sst2", tokenized, renderer, "manyicl")
    *demos, last = examples
    # The evaluation prompt with the same demonstrations, answered the way training answers the last example.
    text = renderer.prompt(demos, last.input) + renderer.answer_text(last.answer) + renderer.frame.close
    expected = tok(text + renderer.frame.tail, add_special_tokens=False).input_ids
    assert seq.input_ids == expected, [tok.convert_ids_to_tokens(x) for x in (seq.input_ids, expected)]
    prompt_ids = tok(renderer.prompt(demos, last.input), add_special_tokens=False).input_ids
    assert seq.input_ids[:len(prompt_ids)] == prompt_ids
    assert sequence_cost(tokenized, renderer) == seq.num_tokens


def test_a_task_without_train_examples_is_refused_not_dropped(chat):
    with pytest.raises(HarnessError, match="Task sst2 has no train examples to pack"):
        pack_task(_task_data([]), chat, "manyicl", 256, seed=1)
    with pytest.raises(HarnessError, match="with --examples-per-task 0"):
        pack_task(_task_data(_examples(4)), chat, "manyicl", 256, seed=1, max_examples=0)
