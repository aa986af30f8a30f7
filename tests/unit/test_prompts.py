"""Evaluation prompts: the fixed demonstration pool, k / many whole demonstrations fitted to the context, shot
parsing, the generated lm-eval task configs, and the number/ROUGE metrics copied next to them."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.lm_eval_bridge import write_lm_eval_task
from manyicl.harness.prompts import build_prompts, demonstration_pool, draw_blocks, parse_shots
from manyicl.harness.settings import EvalConfig
from manyicl.tasks import lm_eval_metrics
from manyicl.tasks.registry import Example, TaskData, load_examples, load_task
from manyicl.train.sequences import Renderer

VOCAB = "the a movie film good bad great awful plot actor was is and of to with people money".split()


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module", params=["chat", "plain"])
def renderer(request, tokenizer) -> Renderer:
    return Renderer(tokenizer, request.param)


@pytest.fixture(scope="module")
def chat(tokenizer) -> Renderer:
    return Renderer(tokenizer, "chat")


@pytest.fixture(scope="module")
def sst2(tiny_data) -> TaskData:
    return load_examples(load_task("sst2"), tiny_data)


@pytest.fixture(scope="module")
def asdiv(tiny_data) -> TaskData:
    return load_examples(load_task("asdiv"), tiny_data)


def count(renderer: Renderer, text: str) -> int:
    return len(renderer.tokenizer(text, add_special_tokens=False).input_ids)


def reserve(renderer: Renderer, data: TaskData, ex: Example) -> int:
    """Tokens kept free after the prompt: the longest choice (plus one token of margin) or max_gen_toks."""
    if data.task.kind == "multiple_choice":
        return max(count(renderer, renderer.answer_text(c)) for c in ex.choices) + 1
    return data.task.max_gen_toks


def hand_data(n_train: int, test_inputs: list[str], seed: int = 0) -> TaskData:
    """sst2-shaped data whose train and test inputs can be told apart by eye: `train item` / `test item`."""
    rng = random.Random(seed)

    def ex(uid: str, text: str, i: int) -> Example:
        return Example(uid=uid, input=f"Review: {text}\nSentiment:", answer=("negative", "positive")[i % 2],
                       choices=("negative", "positive"), gold=i % 2)

    train = [ex(f"sst2:train:{i}", f"train item {i} " + " ".join(rng.choice(VOCAB) for _ in range(rng.randint(3, 9))), i)
             for i in range(n_train)]
    test = [ex(f"sst2:test:{i}", text, i) for i, text in enumerate(test_inputs)]
    return TaskData(task=load_task("sst2"), train=tuple(train), test=tuple(test), source="hand-written")


def demo_part(doc_prompt: str, query: str, renderer: Renderer) -> str:
    """The prompt without its query: the header and the demonstrations."""
    tail = query + renderer.frame.mid
    assert doc_prompt.endswith(tail)
    return doc_prompt[: len(doc_prompt) - len(tail)]


# --------------------------------------------------------------------------- k shots


def test_k_shot_takes_the_first_k_of_a_fixed_pool(sst2, renderer):
    pool = demonstration_pool(sst2, 1234)
    assert sorted(e.uid for e in pool) == sorted(e.uid for e in sst2.train)  # a permutation of the train split
    assert [e.uid for e in demonstration_pool(sst2, 1234)] == [e.uid for e in pool]  # fixed per (task, seed)
    prompts = build_prompts(sst2, renderer, "3", 1234, 2048, None)
    assert len(prompts.docs) == len(sst2.test) and prompts.skipped == 0
    for doc, ex in zip(prompts.docs, sst2.test, strict=True):
        assert doc.uid == ex.uid and doc.shots_used == 3
        assert doc.prompt == renderer.prompt(pool[:3], ex.input)
        assert doc.prompt_tokens == count(renderer, doc.prompt)
        assert doc.choices == [renderer.answer_text(c) for c in ex.choices] and doc.gold == ex.gold
        demos = demo_part(doc.prompt, ex.input, renderer)
        positions = [demos.find(d.input) for d in pool[:3]]
        assert -1 not in positions and positions == sorted(positions)  # in pool order
        assert pool[3].input not in demos
    assert prompts.shots_used == [3] * len(sst2.test)


def test_every_document_of_a_task_and_seed_shares_one_prefix(sst2, chat):
    for shots in ("2", "many"):
        prompts = build_prompts(sst2, chat, shots, 7, 2048, None)
        prefixes = {demo_part(d.prompt, ex.input, chat) for d, ex in zip(prompts.docs, sst2.test, strict=True)}
        assert len(prefixes) == 1, shots


def test_another_seed_draws_other_demonstrations(sst2, chat):
    a = build_prompts(sst2, chat, "3", 1234, 2048, 2)
    b = build_prompts(sst2, chat, "3", 1235, 2048, 2)
    assert [d.shots_used for d in a.docs] == [d.shots_used for d in b.docs] == [3, 3]
    assert a.docs[0].prompt != b.docs[0].prompt
    assert demonstration_pool(sst2, 1234)[:3] != demonstration_pool(sst2, 1235)[:3]
    # the draw also depends on the task: two tasks with one seed do not get the same permutation
    asdiv = TaskData(task=load_task("asdiv"), train=sst2.train, test=(), source="same rows")
    assert [e.uid for e in demonstration_pool(asdiv, 1234)] != [e.uid for e in demonstration_pool(sst2, 1234)]


def test_limit_keeps_the_first_documents(sst2, chat):
    prompts = build_prompts(sst2, chat, "0", 1234, 2048, 3)
    assert [d.uid for d in prompts.docs] == [e.uid for e in sst2.test[:3]]
    assert all(d.prompt == chat.prompt([], e.input) for d, e in zip(prompts.docs, sst2.test[:3], strict=True))


def test_demonstrations_come_only_from_the_train_split(renderer):
    tests = [f"test item {i} " + " ".join(VOCAB[i:i + 4]) for i in range(6)]
    data = hand_data(30, tests)
    for shots in ("0", "5", "many"):
        prompts = build_prompts(data, renderer, shots, 3, 4096, None)
        assert len(prompts.docs) == 6
        for doc, ex in zip(prompts.docs, data.test, strict=True):
            demos = demo_part(doc.prompt, ex.input, renderer)
            assert "test item" not in demos and doc.prompt.count("test item") == 1
            assert demos.count("train item") == doc.shots_used
    assert all(d.shots_used == 30 for d in prompts.docs)  # `many` last: 4096 tokens hold the whole pool


def test_tiny_data_demonstrations_hold_no_test_row(sst2, chat):
    test_inputs = {e.input for e in sst2.test}
    prompts = build_prompts(sst2, chat, "many", 1234, 4096, None)
    for doc, ex in zip(prompts.docs, sst2.test, strict=True):
        demos = demo_part(doc.prompt, ex.input, chat)
        assert not any(t in demos for t in test_inputs)
        assert doc.uid.startswith("sst2:test:") and "sst2:test:" not in doc.prompt
    assert prompts.docs[0].shots_used == len(sst2.train)


# --------------------------------------------------------------------------- many shots


@pytest.mark.parametrize("task", ["sst2", "asdiv"])
@pytest.mark.parametrize("max_length", [160, 241, 333, 512])
def test_many_fits_as_many_whole_demonstrations_as_fit(task, max_length, renderer, sst2, asdiv):
    data = {"sst2": sst2, "asdiv": asdiv}[task]
    pool = demonstration_pool(data, 1234)
    prompts = build_prompts(data, renderer, "many", 1234, max_length, None)
    assert prompts.skipped == 0
    for doc, ex in zip(prompts.docs, data.test, strict=True):
        n = doc.shots_used
        assert doc.prompt == renderer.prompt(pool[:n], ex.input)  # whole demonstrations, never a cut one
        assert doc.prompt_tokens == count(renderer, doc.prompt)
        assert doc.prompt_tokens + reserve(renderer, data, ex) <= max_length
        assert n < len(pool), "the pool should not fit whole at these lengths"
        one_more = count(renderer, renderer.prompt(pool[: n + 1], ex.input))
        assert one_more + reserve(renderer, data, ex) > max_length, (doc.uid, n)
    assert max(prompts.shots_used) > 0 or max_length < 241


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_many_at_the_exact_fit_boundary(fmt, tokenizer, sst2, asdiv):
    """A context exactly as long as n demonstrations + query + reserve holds n; one token less holds n - 1."""
    renderer = Renderer(tokenizer, fmt)
    for data in (sst2, asdiv):
        pool = demonstration_pool(data, 1234)
        ex = data.test[0]
        for n in (1, 4):
            exact = count(renderer, renderer.prompt(pool[:n], ex.input)) + reserve(renderer, data, ex)
            fits = build_prompts(data, renderer, "many", 1234, exact, 1).docs[0]
            assert fits.shots_used == n and fits.prompt_tokens + reserve(renderer, data, ex) == exact
            short = build_prompts(data, renderer, "many", 1234, exact - 1, 1).docs[0]
            assert short.shots_used == n - 1


def test_k_shots_that_do_not_fit_every_document_are_refused(chat):
    """A score labelled k shots must be a k-shot score: where a long query leaves room for fewer demonstrations,
    the setting is refused (saying how many documents fit how few), never silently scored with fewer."""
    data = hand_data(10, ["test item short", "test item long " + " ".join(VOCAB * 12)])
    pool = demonstration_pool(data, 1)
    short_q, long_q = (e.input for e in data.test)
    # room for the long query with exactly one demonstration
    max_length = count(chat, chat.prompt(pool[:1], long_q)) + reserve(chat, data, data.test[1])
    assert count(chat, chat.prompt(pool[:4], short_q)) < max_length - 10
    with pytest.raises(HarnessError, match=rf"^At --shots 4, 1 of 2 sst2 documents fit only 1-1 demonstrations in "
                                           rf"{max_length} tokens; raise --max-length, lower --shots, or use `many`"):
        build_prompts(data, chat, "4", 1, max_length, None)
    assert [d.shots_used for d in build_prompts(data, chat, "1", 1, max_length, None).docs] == [1, 1]
    # `many` takes what fits, document by document
    short, long_ = build_prompts(data, chat, "many", 1, max_length, None).docs
    assert short.shots_used > 1 and long_.shots_used == 1 and long_.prompt == chat.prompt(pool[:1], long_q)
    roomy = count(chat, chat.prompt(pool[:4], long_q)) + reserve(chat, data, data.test[1])
    short, long_ = build_prompts(data, chat, "4", 1, roomy, None).docs
    assert short.prompt == chat.prompt(pool[:4], short_q) and long_.prompt == chat.prompt(pool[:4], long_q)


def test_more_shots_than_the_train_split_is_refused(sst2, chat):
    n = len(sst2.train)
    assert len(build_prompts(sst2, chat, str(n), 1234, 8192, 1).docs) == 1  # exactly the pool is fine
    with pytest.raises(HarnessError, match=rf"has {n} train examples, fewer than --shots {n + 1}"):
        build_prompts(sst2, chat, str(n + 1), 1234, 8192, 1)


def test_a_query_that_never_fits_is_skipped_and_counted(chat):
    huge = "test item huge " + " ".join(VOCAB * 40)
    data = hand_data(10, ["test item a", huge, "test item b"])
    assert count(chat, chat.prompt([], huge)) > 256
    prompts = build_prompts(data, chat, "many", 1, 256, None)
    assert prompts.skipped == 1
    assert [d.uid for d in prompts.docs] == ["sst2:test:0", "sst2:test:2"]
    only_huge = hand_data(10, [huge, huge + " again"])
    with pytest.raises(HarnessError, match="No document of task sst2 fits in 256 tokens.*raise --max-length"):
        build_prompts(only_huge, chat, "0", 1, 256, None)


# --------------------------------------------------------------------------- shot settings


def test_parse_shots_accepts_numbers_and_many():
    assert parse_shots(EvalConfig(shots="0,5,many").shots) == ["0", "5", "many"]
    assert parse_shots(["5", "05", " MANY ", "many", 0]) == ["5", "many", "0"]  # normalised, deduplicated


@pytest.mark.parametrize("values, word", [(["-1"], "`-1`"), (["abc"], "`abc`"), (["0", "x"], "`x`"),
                                          ([], "empty"), ([""], "``"), (["1.5"], "`1.5`"), (["²"], "`²`")])
def test_parse_shots_rejects_with_one_sentence(values, word):
    with pytest.raises(HarnessError) as info:
        parse_shots(values)
    message = str(info.value)
    assert word in message and "--shots" in message and "many" in message
    assert "\n" not in message and message.endswith(".")


def test_empty_shots_flag_means_no_settings():
    assert EvalConfig(shots="").shots == []
    with pytest.raises(HarnessError, match="--shots is empty"):
        parse_shots(EvalConfig(shots="").shots)


# --------------------------------------------------------------------------- lm-eval task configs


def _lm_eval_task(folder, name):
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    assert name in manager.all_tasks
    return get_task_dict([name], manager)[name]


def test_multiple_choice_config_loads_in_lm_eval_with_the_same_docs(sst2, chat, tmp_path):
    prompts = build_prompts(sst2, chat, "2", 1234, 512, 5)
    name = write_lm_eval_task(prompts, chat, tmp_path)
    assert name == "harness_sst2_2shot_s1234"
    assert (tmp_path / f"{name}.yaml").exists() and (tmp_path / "metrics.py").exists()
    assert len(list((tmp_path / "data").glob(f"{name}-*.jsonl"))) == 1
    task = _lm_eval_task(tmp_path, name)
    assert task.config.num_fewshot == 0 and task.OUTPUT_TYPE == "multiple_choice"
    docs = list(task.test_docs())
    assert [d["uid"] for d in docs] == [d.uid for d in prompts.docs]
    for doc, ours in zip(docs, prompts.docs, strict=True):
        assert task.doc_to_text(doc) == ours.prompt
        assert task.doc_to_choice(doc) == ours.choices == ["negative", "positive"]
        assert task.doc_to_target(doc) == ours.gold
        assert doc["shots_used"] == 2 and doc["prompt_tokens"] == ours.prompt_tokens
    # what lm-eval will score: the prompt, then each choice with no delimiter in between
    request = task.construct_requests(docs[0], task.doc_to_text(docs[0]))
    assert [r.args for r in request] == [(prompts.docs[0].prompt, c) for c in prompts.docs[0].choices]


def test_generation_config_loads_with_stops_and_metric(asdiv, chat, tmp_path):
    prompts = build_prompts(asdiv, chat, "many", 9, 512, 4)
    name = write_lm_eval_task(prompts, chat, tmp_path)
    task = _lm_eval_task(tmp_path, name)
    assert task.OUTPUT_TYPE == "generate_until"
    docs = list(task.test_docs())
    assert [task.doc_to_text(d) for d in docs] == [d.prompt for d in prompts.docs]
    assert [task.doc_to_target(d) for d in docs] == [e.answer for e in asdiv.test[:4]]
    kwargs = task.config.generation_kwargs
    assert kwargs["until"] == chat.stop_sequences == ["<|im_end|>"] and kwargs["max_gen_toks"] == 24
    assert kwargs["do_sample"] is False
    gold = docs[0]["target"]
    assert task.process_results(docs[0], [f"It is {gold}"]) == {"exact_match": 1.0}
    assert task.process_results(docs[0], ["no idea"]) == {"exact_match": 0.0}


def test_a_changed_document_set_gets_a_new_data_file(sst2, chat, tmp_path):
    first = write_lm_eval_task(build_prompts(sst2, chat, "0", 1234, 512, 2), chat, tmp_path)
    second = write_lm_eval_task(build_prompts(sst2, chat, "0", 1234, 512, 3), chat, tmp_path)
    assert first == second
    assert len(list((tmp_path / "data").glob(f"{first}-*.jsonl"))) == 2
    assert len(list(_lm_eval_task(tmp_path, first).test_docs())) == 3  # the YAML points at the newer file


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("generated, reference, hit", [
    ("The answer is 7.", "3 + 4 = <<3+4=7>>7\n#### 7", 1.0),  # gsm8k reference: the number after ####
    ("3 + 4 = 7\n#### 7", "3 + 4 = <<3+4=7>>7\n#### 7", 1.0),
    ("#### 7\n\nQuestion: 12 apples", "#### 7", 1.0),  # after #### the first number counts
    ("7 then 9", "#### 7", 0.0),  # otherwise the last
    ("There are 9 apples.", "9 apples", 1.0),  # asdiv reference with a unit
    ("9", "9 apples", 1.0),
    ("8 apples", "9 apples", 0.0),
    ("It costs $1,234 in all", "#### 1234", 1.0),  # thousands separators
    ("1234", "#### 1,234", 1.0),
    ("-5", "#### -5", 1.0),  # negatives
    ("5", "#### -5", 0.0),
    ("3.50", "3.5", 1.0),  # decimals compare as numbers
    ("3.5", "#### 3", 0.0),
    ("no number here", "#### 4", 0.0),
    ("", "#### 4", 0.0),
    ("nothing", "no number either", 0.0),  # neither has one: not a match
])
def test_exact_match_number(generated, reference, hit):
    assert lm_eval_metrics.exact_match_number({"target": reference}, [generated]) == {"exact_match": hit}


def test_final_number():
    assert lm_eval_metrics.final_number("5 + 6 = 11\n#### 1,011") == 1011.0
    assert lm_eval_metrics.final_number("#### ") is None
    assert lm_eval_metrics.final_number("from -2.5 to 3") == 3.0
    assert lm_eval_metrics.final_number("-2.5") == -2.5


def test_rouge_l():
    def score(generated: str, reference: str) -> float:
        return lm_eval_metrics.rouge_l({"target": reference}, [generated])["rouge_l"]

    assert score("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert score("  the cat sat on the mat\n", "the cat sat on the mat") == pytest.approx(1.0)  # stripped
    assert score("dogs bark loudly", "the cat sat") == 0.0
    # LCS 3 of 3 generated and 6 reference tokens: P = 1, R = 0.5, F = 2PR / (P + R)
    assert score("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert score("cats sitting", "cat sits") == pytest.approx(1.0)  # stemmed


# --------------------------------------------------------------------------- demonstration draws


def test_draw_blocks_are_balanced_seeded_and_the_same_for_every_arm():
    uids = [f"d{i}" for i in range(103)]
    blocks = draw_blocks(uids, "sst2", 1234, 8)
    sizes = sorted(Counter(blocks.values()).values())
    assert sizes[-1] - sizes[0] <= 1 and set(blocks.values()) == set(range(8))
    # a function of the documents (not their order), the task and the seed only
    assert blocks == draw_blocks(list(reversed(uids)), "sst2", 1234, 8)
    assert blocks != draw_blocks(uids, "sst2", 1235, 8)
    # not the file's order: a file sorted by label must not put one label in one block
    assert [blocks[u] for u in uids[:13]] != sorted(blocks[u] for u in uids[:13])
    assert set(draw_blocks(uids, "sst2", 1234, 1).values()) == {0}


def test_each_block_is_prompted_from_its_own_draw_and_shares_split_the_blocks(sst2, chat):
    whole = build_prompts(sst2, chat, "3", 1234, 2048, None, draws=4)
    assert whole.draws == 4 and {d.draw for d in whole.docs} == {0, 1, 2, 3}
    by_block = {}
    for d, ex in zip(whole.docs, sst2.test, strict=True):
        by_block.setdefault(d.draw, set()).add(demo_part(d.prompt, ex.input, chat))
    assert all(len(prefixes) == 1 for prefixes in by_block.values())  # one prefix per block
    assert len({next(iter(p)) for p in by_block.values()}) == 4  # and four different draws
    # block 0 keeps the single-draw demonstrations
    single = build_prompts(sst2, chat, "3", 1234, 2048, None)
    first = next(d for d in whole.docs if d.draw == 0)
    assert first.prompt == next(d.prompt for d in single.docs if d.uid == first.uid)
    shares = [build_prompts(sst2, chat, "3", 1234, 2048, None, draws=4, share=(i, 2)) for i in (1, 2)]
    assert {d.draw for d in shares[0].docs} == {0, 2} and {d.draw for d in shares[1].docs} == {1, 3}
    assert sorted(d.uid for s in shares for d in s.docs) == sorted(d.uid for d in whole.docs)
    assert {d.uid: d.prompt for s in shares for d in s.docs} == {d.uid: d.prompt for d in whole.docs}
    # at 0 shots there is nothing to draw: every block's prompt is the bare query
    zero = build_prompts(sst2, chat, "0", 1234, 2048, None, draws=4)
    assert all(d.prompt == chat.prompt([], ex.input) for d, ex in zip(zero.docs, sst2.test, strict=True))
