"""The sequence builder: pack whole examples of one task into token sequences and mark which tokens are trained.

Vocabulary: an *example* is one input and its answer; a *sequence* is one packed training row of one task;
a *target* is an answer the loss is computed on. `build_labels` is the one pure function that turns token
segments into `input_ids` and `labels`; everything else decides which segments exist and which are trained.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import METHODS
from manyicl.tasks.registry import Example, TaskData

IGNORE_INDEX = -100
FORMATS = ("chat", "plain")

# Which segments carry loss, per method: every answer, only the last answer, or every input and answer.
_TRAIN_EVERY_ANSWER = {"manyicl", "manyicl-full"}
_TRAIN_INPUTS = {"manyicl-full"}


def build_labels(segments: Sequence[tuple[Sequence[int], bool]]) -> tuple[list[int], list[int]]:
    """Concatenate token segments into `input_ids`; `labels` copy the ids of trained segments, -100 elsewhere.

    >>> build_labels([([1, 2], False), ([3, 4], True), ([5], False), ([6], True)])
    ([1, 2, 3, 4, 5, 6], [-100, -100, 3, 4, -100, 6])
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, trained in segments:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


def trained_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of trained positions as half-open token index pairs [start, end)."""
    spans, start = [], None
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(labels)))
    return spans


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Frame:
    """The text a format puts around examples. A sequence of examples e1..en renders as
    `header + (input + mid + answer + close) joined by sep + tail`; `close` (the end-of-turn or EOS token) is
    trained with its answer. For a prompt, the query renders as `input + mid` and the model continues."""

    header: str
    mid: str
    close: str
    sep: str
    tail: str
    answer_prefix: str = ""  # plain format: the space between "Answer:" and the answer


_SENTINELS = ("QQUSERZERO", "QQASSISTANTZERO", "QQUSERONE", "QQASSISTANTONE")


def chat_frame(tokenizer) -> Frame:
    """Derive the frame from the tokenizer's chat template, and check the template is turn-regular."""
    if not getattr(tokenizer, "chat_template", None):
        raise HarnessError("This tokenizer has no chat template; use --format plain.")
    u0, a0, u1, a1 = _SENTINELS
    conversation = [{"role": "user", "content": u0}, {"role": "assistant", "content": a0},
                    {"role": "user", "content": u1}, {"role": "assistant", "content": a1}]
    try:
        full = tokenizer.apply_chat_template(conversation, tokenize=False)
        gen = tokenizer.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    except Exception as err:  # templates raise their own exception types
        raise HarnessError(f"The chat template failed on a plain user/assistant exchange ({err}); use --format plain.") from None
    positions = [full.find(s) for s in _SENTINELS]
    if -1 in positions or positions != sorted(positions):
        raise HarnessError("The chat template rewrites message contents; use --format plain.")
    header = full[: positions[0]]
    mid = full[positions[0] + len(u0): positions[1]]
    between = full[positions[1] + len(a0): positions[2]]
    mid_again = full[positions[2] + len(u1): positions[3]]
    after_last = full[positions[3] + len(a1):]
    close = _leading_end_of_turn(between, tokenizer)
    sep = between[len(close):]
    frame = Frame(header=header, mid=mid, close=close, sep=sep, tail=after_last[len(close):])
    ok = (mid == mid_again and after_last.startswith(close) and gen == header + u0 + mid)
    if not ok:
        raise HarnessError("The chat template is not the same for every turn, so examples cannot be packed "
                           "turn by turn; use --format plain.")
    return frame


def _leading_end_of_turn(text: str, tokenizer) -> str:
    """The text after an assistant message up to and including its first special token (e.g. `<|im_end|>`)."""
    best = None
    for token in tokenizer.all_special_tokens:
        idx = text.find(token)
        if idx != -1 and (best is None or idx < best[0]):
            best = (idx, token)
    if best is None:
        raise HarnessError("The chat template ends assistant turns with no special token, so the model could not "
                           "learn to stop; use --format plain.")
    return text[: best[0] + len(best[1])]


def plain_frame(tokenizer) -> Frame:
    bos = tokenizer.bos_token if tokenizer.bos_token and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id] else ""
    return Frame(header=bos or "", mid="", close=tokenizer.eos_token or "", sep="\n\n", tail="", answer_prefix=" ")


def resolve_format(tokenizer, fmt: str) -> str:
    """`auto` means chat when the tokenizer has a chat template, else plain; other values pass through."""
    if fmt == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    return fmt


class Renderer:
    """Renders examples in one format (chat or plain) for one tokenizer, as text and as token segments."""

    def __init__(self, tokenizer, fmt: str):
        if fmt not in FORMATS:
            raise HarnessError(f"Unknown format `{fmt}`; use one of {', '.join(FORMATS)}.")
        self.tokenizer = tokenizer
        self.format = fmt
        self.frame = chat_frame(tokenizer) if fmt == "chat" else plain_frame(tokenizer)
        self._cache: dict[str, list[int]] = {}

    # -- text (evaluation prompts, previews)

    def answer_text(self, answer: str) -> str:
        """The continuation scored or generated after a prompt."""
        return self.frame.answer_prefix + answer

    def prompt(self, demonstrations: Sequence[Example], query: str) -> str:
        """Demonstrations (each with its answer, as in training) then the query, ready for the model to answer."""
        f = self.frame
        parts = [f.header]
        for demo in demonstrations:
            parts += [demo.input, f.mid, self.answer_text(demo.answer), f.close, f.sep]
        parts += [query, f.mid]
        return "".join(parts)

    @property
    def stop_sequences(self) -> list[str]:
        stops = [self.frame.close.strip() or self.frame.close]
        if self.format == "plain":
            stops.append("\n\n")
        return [s for s in stops if s]

    # -- tokens (training)

    def ids(self, text: str) -> list[int]:
        cached = self._cache.get(text)
        if cached is None:
            cached = self.tokenizer(text, add_special_tokens=False).input_ids if text else []
            if len(self._cache) < 4096:
                self._cache[text] = cached
        return cached

    def tokenize_examples(self, examples: Sequence[Example]) -> list[TokenizedExample]:
        """Input, answer and separator token ids for many examples (batched: the fast tokenizer does the work)."""
        if not examples:
            return []
        enc = self.tokenizer([e.input for e in examples], add_special_tokens=False).input_ids
        ans = self.tokenizer([self.answer_text(e.answer) + self.frame.close for e in examples],
                             add_special_tokens=False).input_ids
        # The separator is tokenized together with the input after it, as it is inside an evaluation prompt:
        # alone, SmolLM2 makes the plain format's blank line one token; before text it becomes two.
        sep = self.frame.sep
        joint = self.tokenizer([sep + e.input for e in examples], add_special_tokens=False).input_ids if sep else None
        out = []
        for n, (e, i, a) in enumerate(zip(examples, enc, ans, strict=True)):
            sep_ids = self.ids(sep)
            if joint is not None:
                j = joint[n]
                # Only when the input's own tokens survive intact after the separator is the split exact.
                if len(j) > len(i) and list(j[len(j) - len(i):]) == list(i):
                    sep_ids = list(j[: len(j) - len(i)])
            out.append(TokenizedExample(e.uid, list(i), list(a), sep_ids))
        return out


@dataclass(frozen=True)
class TokenizedExample:
    uid: str
    input_ids: list[int]
    answer_ids: list[int]  # the answer and its end-of-turn/EOS token: the target when trained
    sep_ids: list[int]  # the separator before this example when another precedes it, tokenized in context


@dataclass
class TrainingSequence:
    """One packed row of one task: ids, labels and what it holds."""

    task: str
    input_ids: list[int]
    labels: list[int]
    num_examples: int
    num_targets: int
    target_spans: list[tuple[int, int]]  # token index pairs [start, end) of each trained answer
    example_uids: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def assemble(task: str, examples: Sequence[TokenizedExample], renderer: Renderer, method: str) -> TrainingSequence:
    """Build one sequence from whole examples; the method decides which segments are trained."""
    if method not in METHODS:
        raise HarnessError(f"Unknown method `{method}`; use one of {', '.join(METHODS)}.")
    f = renderer.frame
    ids = renderer.ids
    segments: list[tuple[Sequence[int], bool]] = [(ids(f.header), False)]
    spans: list[tuple[int, int]] = []
    position = len(segments[0][0])
    last = len(examples) - 1
    for i, ex in enumerate(examples):
        train_answer = method in _TRAIN_EVERY_ANSWER or i == last
        train_input = method in _TRAIN_INPUTS
        pieces = [(ex.input_ids, train_input), (ids(f.mid), False), (ex.answer_ids, train_answer)]
        if i > 0:
            pieces.insert(0, (ex.sep_ids, False))
        for piece, trained in pieces:
            if piece is ex.answer_ids and trained:
                spans.append((position, position + len(piece)))
            segments.append((piece, trained))
            position += len(piece)
    segments.append((ids(f.tail), False))
    input_ids, labels = build_labels(segments)
    return TrainingSequence(task=task, input_ids=input_ids, labels=labels, num_examples=len(examples),
                            num_targets=len(spans), target_spans=spans, example_uids=[e.uid for e in examples])


def example_cost(ex: TokenizedExample, renderer: Renderer) -> int:
    """Tokens one example adds to a sequence (its input, the frame between, its answer and end token)."""
    return len(ex.input_ids) + len(renderer.ids(renderer.frame.mid)) + len(ex.answer_ids)


def frame_cost(renderer: Renderer) -> int:
    """Tokens a sequence spends around its examples: the header and the tail."""
    f = renderer.frame
    return len(renderer.ids(f.header)) + len(renderer.ids(f.tail))


def sequence_cost(examples: Sequence[TokenizedExample], renderer: Renderer) -> int:
    """Tokens of the sequence `assemble` builds from these examples."""
    return (frame_cost(renderer) + sum(example_cost(e, renderer) for e in examples)
            + sum(len(e.sep_ids) for e in examples[1:]))


@dataclass
class TaskPacking:
    """The sequences of one task and what was left out."""

    task: str
    sequences: list[TrainingSequence]
    skipped_too_long: int  # examples that alone exceed max_seq_len


def pack_task(data: TaskData, renderer: Renderer, method: str, max_seq_len: int, seed: int,
              shots: int = 4, max_examples: int | None = None,
              tokenized: Sequence[TokenizedExample] | None = None) -> TaskPacking:
    """Pack the task's train split, shuffled by `seed`, into whole-example sequences of at most `max_seq_len`.

    zero-shot: one example per sequence. few-shot: `shots` demonstrations and one target (leading
    demonstrations are dropped when the group would not fit). many-shot-last, manyicl, manyicl-full: as
    many whole examples as fit. Every example is used at most once per call; none is ever cut.
    """
    if method not in METHODS:
        raise HarnessError(f"Unknown method `{method}`; use one of {', '.join(METHODS)}.")
    if method == "few-shot" and shots < 1:
        raise HarnessError(f"few-shot needs --shots of at least 1, got {shots}.")
    order = list(range(len(data.train)))
    random.Random(f"{seed}:{data.task.name}").shuffle(order)
    if max_examples is not None:
        order = order[:max_examples]
    if not order:
        # An arm silently trained without one of its tasks would compare unlike with like.
        cap = f" with --examples-per-task {max_examples}" if max_examples is not None else ""
        raise HarnessError(f"Task {data.task.name} has no train examples to pack{cap}; it would be left out of "
                           "training: check its train split, or raise --examples-per-task.")
    if tokenized is None:
        tokenized = renderer.tokenize_examples([data.train[i] for i in order])
    else:
        tokenized = [tokenized[i] for i in order]
    fits = [ex for ex in tokenized if sequence_cost([ex], renderer) <= max_seq_len]
    skipped = len(tokenized) - len(fits)
    if tokenized and not fits:
        raise HarnessError(f"Every example of task {data.task.name} is longer than --max-seq-len {max_seq_len}; "
                           "raise --max-seq-len.")
    groups: list[list[TokenizedExample]] = []
    if method == "zero-shot":
        groups = [[ex] for ex in fits]
    elif method == "few-shot":
        size = shots + 1
        if len(fits) < size:
            raise HarnessError(f"few-shot with --shots {shots} needs {size} train examples of task {data.task.name} "
                               f"per sequence, and it has {len(fits)}; lower --shots.")
        for start in range(0, len(fits) - size + 1, size):
            group = fits[start:start + size]
            while len(group) > 1 and sequence_cost(group, renderer) > max_seq_len:
                group = group[1:]
            groups.append(group)
    else:
        current: list[TokenizedExample] = []
        used = frame_cost(renderer)
        for ex in fits:
            cost = example_cost(ex, renderer) + (len(ex.sep_ids) if current else 0)
            if current and used + cost > max_seq_len:
                groups.append(current)
                current, used = [], frame_cost(renderer)
                cost = example_cost(ex, renderer)
            current.append(ex)
            used += cost
        if current:
            groups.append(current)
    sequences = [assemble(data.task.name, g, renderer, method) for g in groups]
    assert all(s.num_tokens <= max_seq_len for s in sequences), "packing exceeded max_seq_len"
    return TaskPacking(task=data.task.name, sequences=sequences, skipped_too_long=skipped)


# --------------------------------------------------------------------------- rows and budgets


@dataclass
class Row:
    """One training row: one or more whole sequences side by side, kept apart by `seq_lengths`
    (TRL's padding-free collator restarts position ids at each, so they never attend to each other)."""

    input_ids: list[int]
    labels: list[int]
    seq_lengths: list[int]
    num_targets: int
    num_examples: int
    tasks: list[str]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def pack_rows(sequences: Iterable[TrainingSequence], max_seq_len: int) -> list[Row]:
    """Place consecutive sequences side by side into rows of at most `max_seq_len` tokens, in order.

    Short sequences (zero-shot, few-shot) share a row so that every arm spends about the same tokens per
    optimizer step; a full many-shot sequence fills a row on its own.
    """
    rows: list[Row] = []
    current: Row | None = None
    for seq in sequences:
        if current is None or current.num_tokens + seq.num_tokens > max_seq_len:
            current = Row([], [], [], 0, 0, [])
            rows.append(current)
        current.input_ids += seq.input_ids
        current.labels += seq.labels
        current.seq_lengths.append(seq.num_tokens)
        current.num_targets += seq.num_targets
        current.num_examples += seq.num_examples
        current.tasks.append(seq.task)
    return rows


def mix(packings: Sequence[TaskPacking], seed: int) -> list[TrainingSequence]:
    """All tasks' sequences in one order, shuffled by `seed`."""
    sequences = [s for p in packings for s in p.sequences]
    random.Random(seed).shuffle(sequences)
    return sequences


@dataclass(frozen=True)
class Budget:
    """When training stops: whichever limit is reached first. Limits are never exceeded; the row count is
    rounded down to whole optimizer steps."""

    max_steps: int | None = None
    max_tokens: int | None = None
    max_targets: int | None = None
    rows_per_step: int = 1

    def __post_init__(self):
        if self.max_steps is None and self.max_tokens is None and self.max_targets is None:
            raise HarnessError("Give a training budget: --max-steps, --max-tokens or --max-targets.")
        for name in ("max_steps", "max_tokens", "max_targets"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HarnessError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


# What one selected token costs in memory until training starts: a slot in the row's input_ids and labels lists
# (8 bytes each) and its copy in the training Dataset (int64 ids, labels and position ids), with room to spare.
BYTES_PER_ROW_TOKEN = 64


def available_memory() -> int:
    """Bytes this machine can still give (psutil's `available`: free plus reclaimable cache)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_budget_fits(first_epoch: list[Row], budget: Budget, memory_bytes: int) -> None:
    """Refuse, from the first epoch's rows, a budget whose rows would not fit in half the memory left (they are
    built in memory before training starts): a typo like --max-steps 100000000 must cost seconds, not a swap storm."""
    rows = len(first_epoch)
    tokens = sum(r.num_tokens for r in first_epoch)
    targets = sum(r.num_targets for r in first_epoch)
    wanted = [budget.max_steps * budget.rows_per_step if budget.max_steps else None,
              budget.max_tokens * rows / tokens if budget.max_tokens else None,
              budget.max_targets * rows / targets if budget.max_targets and targets else None]
    needed_rows = min((w for w in wanted if w is not None), default=None)
    if needed_rows is None or not rows:
        return
    needed_bytes = needed_rows * tokens / rows * BYTES_PER_ROW_TOKEN
    if needed_bytes > memory_bytes / 2:
        gib = 2**30
        raise HarnessError(f"The budget asks for about {needed_rows:,.0f} training rows ({needed_rows / rows:,.0f} "
                           f"epochs of {rows:,} rows), about {needed_bytes / gib:,.1f} GiB in memory where "
                           f"{memory_bytes / gib:,.1f} GiB is available; lower --max-steps/--max-tokens/--max-targets.")


def select_rows(row_epochs: Iterable[list[Row]], budget: Budget,
                memory_bytes: int | None = None) -> tuple[list[Row], int]:
    """Take rows epoch after epoch until the budget is met; returns the rows and the epochs started. A budget
    whose rows would not fit in memory (`memory_bytes`, default what is available) is refused after the first
    epoch."""
    chosen: list[Row] = []
    tokens = targets = 0
    max_rows = budget.max_steps * budget.rows_per_step if budget.max_steps else None
    epochs = 0
    for rows in row_epochs:
        if not rows:
            break
        if epochs == 0:
            check_budget_fits(rows, budget, available_memory() if memory_bytes is None else memory_bytes)
        epochs += 1
        for row in rows:
            if max_rows is not None and len(chosen) >= max_rows:
                break
            if budget.max_tokens is not None and tokens + row.num_tokens > budget.max_tokens:
                max_rows = len(chosen)
                break
            if budget.max_targets is not None and targets + row.num_targets > budget.max_targets:
                max_rows = len(chosen)
                break
            chosen.append(row)
            tokens += row.num_tokens
            targets += row.num_targets
        if max_rows is not None and len(chosen) >= max_rows:
            break
    whole = (len(chosen) // budget.rows_per_step) * budget.rows_per_step
    if whole == 0:
        raise HarnessError("The budget is smaller than one optimizer step (one row per device batch); "
                           "raise --max-tokens/--max-targets or lower --batch-size/--grad-accum.")
    return chosen[:whole], epochs
