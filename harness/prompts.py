"""Prompt fitting: a fixed demonstration pool per (task, seed), and 0 / k / as many whole demonstrations as fit
in the context before each test document."""

from __future__ import annotations

import random
from dataclasses import dataclass

from manyicl.harness.errors import HarnessError
from manyicl.tasks.registry import Example, TaskData, TaskDef
from manyicl.train.sequences import Renderer


def parse_shots(values: list[str], flag: str = "--shots") -> list[str]:
    """Validate shot settings: non-negative integers or `many`; returned normalised and deduplicated."""
    out: list[str] = []
    if not values:
        raise HarnessError(f"{flag} is empty; give numbers and/or `many`, like 0,5,many.")
    for value in values:
        text = str(value).strip().lower()
        if text != "many" and not text.isdecimal():  # isdigit() also takes "²", which int() refuses
            raise HarnessError(f"{flag} value `{value}` is not a non-negative number or `many`; use e.g. 0,5,many.")
        text = text if text == "many" else str(int(text))
        if text not in out:
            out.append(text)
    return out



@dataclass(frozen=True)
class Doc:
    """One scored document: the full prompt (demonstrations + query) and what it is scored against."""

    uid: str
    prompt: str
    shots_used: int
    prompt_tokens: int
    choices: list[str] | None
    gold: int | None
    target: str | None
    draw: int = 0  # the draw block it belongs to (its demonstrations' draw at k > 0 shots)


@dataclass
class PromptSet:
    task: TaskDef
    shots: str
    seed: int
    docs: list[Doc]
    skipped: int  # documents whose query alone does not fit the context
    draws: int = 1  # G: demonstration draws (document blocks) of this setting
    share: tuple[int, int] = (1, 1)  # (i, n): the share of the blocks scored here

    @property
    def shots_used(self) -> list[int]:
        return [d.shots_used for d in self.docs]


def demonstration_pool(data: TaskData, seed: int, draw: int = 0) -> list[Example]:
    """The task's demonstrations in a fixed order per (task, seed, draw); only ever from the train split. Draw 0
    is the order a single-draw evaluation has always used."""
    pool = list(data.train)
    suffix = f":{draw}" if draw else ""
    random.Random(f"{seed}:{data.task.name}:demonstrations{suffix}").shuffle(pool)
    return pool


def draw_blocks(uids: list[str], task: str, seed: int, draws: int) -> dict[str, int]:
    """Each document's draw block: the documents in a seeded order (not the file's order, which may be sorted by
    label), cut into `draws` blocks whose sizes differ by at most one. It depends only on the documents, the task
    and the seed, so every arm gets the same assignment and stays paired."""
    if draws == 1:
        return dict.fromkeys(uids, 0)
    order = sorted(uids)
    random.Random(f"{seed}:{task}:draw-blocks").shuffle(order)
    return {uid: position * draws // len(order) for position, uid in enumerate(order)}


def in_share(block: int, share: tuple[int, int]) -> bool:
    """Whether a draw block belongs to share (i, n): blocks g with g mod n = i - 1."""
    return block % share[1] == share[0] - 1


def build_prompts(data: TaskData, renderer: Renderer, shots: str, seed: int, max_length: int,
                  limit: int | None, draws: int = 1, share: tuple[int, int] = (1, 1)) -> PromptSet:
    """Prompts for every test document: the first k demonstrations of its draw's fixed pool (or, for `many`, as
    many whole ones as fit with the query and the longest continuation), never a cut demonstration. With
    `draws` G > 1 the documents are split into G blocks (`draw_blocks`), each prompted from its own draw; `share`
    keeps only some blocks (a training seed's disjoint share)."""
    task = data.task
    pools = [demonstration_pool(data, seed, g) for g in range(draws)]
    pool_size = len(pools[0])
    if shots != "many" and int(shots) > pool_size:
        raise HarnessError(f"Task {task.name} has {pool_size} train examples, fewer than --shots {shots}; "
                           f"ask for at most {pool_size} or `many`.")
    wanted = pool_size if shots == "many" else int(shots)
    tok = renderer.tokenizer
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    f = renderer.frame
    docs_src = list(data.test[:limit] if limit else data.test)
    blocks = draw_blocks([ex.uid for ex in docs_src], task.name, seed, draws)
    docs_src = [ex for ex in docs_src if in_share(blocks[ex.uid], share)]

    fixed = count(f.header) + count(f.mid)

    def cumulative_costs(pool: list[Example]) -> list[int]:
        """Token cost of the first n demonstrations in prompt form, for as many as could possibly fit."""
        cumulative = [fixed]
        for demo in pool[:wanted]:
            cost = count(demo.input + f.mid + renderer.answer_text(demo.answer) + f.close + f.sep)
            if cumulative[-1] + cost > max_length:
                break
            cumulative.append(cumulative[-1] + cost)
        return cumulative

    costs: dict[int, list[int]] = {}
    docs, skipped = [], 0
    for ex in docs_src:
        g = blocks[ex.uid] if shots != "0" else 0  # at 0 shots every draw's prompt is the same
        pool = pools[g]
        if g not in costs:
            costs[g] = cumulative_costs(pool)
        cumulative = costs[g]
        if task.kind == "multiple_choice":
            assert ex.choices is not None
            continuations = [renderer.answer_text(c) for c in ex.choices]
            reserve = max(count(c) for c in continuations) + 1
        else:
            continuations = None
            reserve = task.max_gen_toks
        budget = max_length - reserve
        query_cost = count(ex.input)
        n = len(cumulative) - 1
        while n >= 0 and cumulative[n] + query_cost > budget:
            n -= 1
        prompt, length = None, 0
        while n >= 0:  # confirm on the exact text: tokens can merge across piece boundaries
            prompt = renderer.prompt(pool[:n], ex.input)
            length = count(prompt)
            if length <= budget:
                break
            n -= 1
        if n < 0 or prompt is None:
            skipped += 1
            continue
        docs.append(Doc(uid=ex.uid, prompt=prompt, shots_used=n, prompt_tokens=length, choices=continuations,
                        gold=ex.gold, target=ex.answer if task.kind == "generation" else None,
                        draw=blocks[ex.uid]))
    if not docs:
        raise HarnessError(f"No document of task {task.name} fits in {max_length} tokens even with no demonstrations; "
                           "raise --max-length.")
    short = [d for d in docs if d.shots_used < wanted]
    if shots != "many" and short:
        # A score labelled k shots must be a k-shot score: refuse rather than mix in fewer-shot documents.
        raise HarnessError(f"At --shots {shots}, {len(short)} of {len(docs)} {task.name} documents fit only "
                           f"{min(d.shots_used for d in short)}-{max(d.shots_used for d in short)} demonstrations in "
                           f"{max_length} tokens; raise --max-length, lower --shots, or use `many`.")
    return PromptSet(task=task, shots=shots, seed=seed, docs=docs, skipped=skipped, draws=draws, share=share)
