"""A many-shot scorer for lm-eval that computes each shared demonstration prefix once and scores every document on
top of its key/value cache (`model="harness-prefix"`), with the same tokens and numbers as lm-eval's `hf` model."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm
from transformers import DynamicCache

from manyicl.harness.cascade_attention import ATTN_IMPLEMENTATION, prefix_keys_values
from manyicl.harness.errors import HarnessError
from manyicl.harness.hf_ranks import adopt_launcher_world

log = logging.getLogger(__name__)

# A forward call costs about as much as this many extra tokens (kernel launches, cache copies): a prefix shared by
# fewer documents than it saves is not worth a separate call.
CALL_OVERHEAD_TOKENS = 16
# Suffix tokens packed into one row behind a shared prefix. More wastes attention on masked pairs of documents,
# fewer runs the attention kernel on slivers: on a 2-core CPU, 8 documents of 65 tokens over a 2,000-token prefix
# cost 2.6 ms per document per layer against 3.7 for 2 and 4.0 for 32 (bench/RESULTS.md).
PACK_TOKENS = 512
# Packed documents are grouped into spans of about this many tokens for the suffix part of cascade attention, so
# it runs over each span's own square instead of the whole row's mostly masked one.
SUFFIX_BLOCK_TOKENS = 128
# Recursion over the sorted requests stops splitting below this depth (a chain of ever longer prefixes).
_MAX_SPLIT_DEPTH = 200


class UnsupportedRequest(HarnessError, NotImplementedError):
    """A request type this scorer does not serve; the message names the backend that does."""


# --------------------------------------------------------------------------- grouping (pure)


@dataclass
class Group:
    """Token sequences that share their first `prefix_len` tokens: the prefix is run once for all of them.

    Groups nest: a child's prefix extends its parent's (documents of a `many` setting that fit one more
    demonstration than the rest share that one too), so a child's cache is its parent's plus the extension, run
    once. `members` are scored directly behind this group's prefix; `children` hold the rest.
    """

    prefix_len: int
    members: list[int] = field(default_factory=list)  # indices into the sequences given to `group_by_prefix`
    children: list[Group] = field(default_factory=list)

    def any_member(self) -> int:
        """One sequence that holds this group's prefix (a group with no direct members has children)."""
        return self.members[0] if self.members else self.children[0].any_member()

    def all_members(self) -> list[int]:
        return self.members + [i for child in self.children for i in child.all_members()]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def group_by_prefix(seqs: Sequence[Sequence[int]], caps: Sequence[int],
                    overhead: int = CALL_OVERHEAD_TOKENS) -> list[Group]:
    """Arrange token sequences in a tree of shared prefixes, choosing the tree that needs the fewest token positions
    computed (each group pays its prefix's extension over its parent's once, plus `overhead` per forward call; each
    sequence pays its tokens beyond its group's prefix).

    `caps[i]` bounds how much of sequence i may be in a shared prefix (its first position whose output is needed
    must stay outside, so its logits are computed). Sorted sequences sharing a prefix sit side by side, and the
    longest prefix of a run is the smallest common prefix of its neighbours, so a run either becomes one group at
    that prefix (its parts then nest inside it), stays behind the parent's prefix, or splits where its neighbours
    share least, recursively. The top level lists root groups; sequences that share nothing worth caching come
    last, in one group of prefix length 0.
    """
    if not seqs:
        return []
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    neighbour = [_lcp(seqs[order[j]], seqs[order[j + 1]]) for j in range(len(order) - 1)]
    capped = [caps[i] for i in order]
    prefix_sums = [0]
    for i in order:
        prefix_sums.append(prefix_sums[-1] + len(seqs[i]))
    memo: dict[tuple[int, int, int], tuple[int, list[int], list[Group]]] = {}

    def best(a: int, b: int, base: int, depth: int) -> tuple[int, list[int], list[Group]]:
        """(cost, members left behind `base`, child groups) for the sorted run [a, b) given a computed prefix of
        `base` tokens."""
        if (a, b, base) in memo:
            return memo[a, b, base]
        flat = (prefix_sums[b] - prefix_sums[a] - (b - a) * base, [order[i] for i in range(a, b)], [])
        options = [flat]
        if b - a > 1 and depth < _MAX_SPLIT_DEPTH:
            low = min(neighbour[a:b - 1])
            shared = min(low, min(capped[a:b]))
            if shared > base:
                cost, members, children = best(a, b, shared, depth + 1)
                options.append((cost + shared - base + 2 * overhead, [], [Group(shared, members, children)]))
            bounds = [a] + [j + 1 for j in range(a, b - 1) if neighbour[j] == low] + [b]
            cost, members, children = 0, [], []
            for start, end in pairwise(bounds):
                part_cost, part_members, part_children = best(start, end, base, depth + 1)
                cost, members, children = cost + part_cost, members + part_members, children + part_children
            options.append((cost, members, children))
        memo[a, b, base] = min(options, key=lambda option: option[0])
        return memo[a, b, base]

    _, unshared, roots = best(0, len(order), 0, 0)
    return roots + ([Group(0, unshared)] if unshared else [])


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token occupies over all layers: 2 x layers x KV heads x head dim x element."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def rows_within_budget(budget_bytes: int, row_bytes: int, rows: int) -> int:
    """How many of `rows` rows of `row_bytes` each fit in the budget (at least one: a row is always attempted)."""
    return max(1, min(rows, budget_bytes // max(1, row_bytes)))


# --------------------------------------------------------------------------- the lm-eval model


@dataclass
class _Unit:
    """One distinct model input (several requests can share one: one-token choices after the same context)."""

    tokens: list[int]  # the input fed to the model (context + continuation without its last token)
    first_needed: int  # the first input position whose next-token logits a request needs


@register_model("harness-prefix")
class PrefixScorerLM(HFLM):
    """lm-eval's `hf` model with prefix reuse: documents sharing demonstrations pay for them once.

    Loading (dtype, device, `peft` adapters, `max_length`), tokenization (`tok_encode`, the `add_bos_token` rule,
    context/continuation split) and left truncation are inherited from `HFLM`, so requests become exactly the
    token sequences `hf` scores; only the forward passes differ. Extra model argument: `memory_budget_gb`, the
    memory one batch of cache copies, activations and logits may take (default: 2 on CPU, half the free GPU
    memory on CUDA).
    """

    def __init__(self, pretrained: Any, memory_budget_gb: float | str | None = None, **kwargs: Any) -> None:
        super().__init__(pretrained=pretrained, **kwargs)
        adopt_launcher_world(self)  # under `harness evaluate --num-processes N`: every N-th document per process
        self._budget = self._budget_bytes(memory_budget_gb)
        caches = DynamicCache(config=self.model.config)
        if any(getattr(layer, "is_sliding", False) for layer in caches.layers):
            raise HarnessError("The prefix scorer supports full-attention models only (this one has sliding-window "
                               "layers); use --backend hf.")
        self._kv_per_token = kv_bytes_per_token(self.model.config, self._param_dtype)
        self._cascade = self._use_cascade_attention()
        self.stats: dict[str, int] = defaultdict(int)  # positions computed, prefixes run: read by the benchmark

    def _use_cascade_attention(self) -> bool:
        """Switch this scorer's own model from SDPA to cascade attention (harness/cascade_attention.py), which is
        SDPA itself except inside the packed forwards. Models on another implementation (eager, flash kernels) keep
        it and get the full-mask path."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if getattr(base.config, "_attn_implementation", None) != "sdpa" or not base._can_set_attn_implementation():
            return False
        base.set_attn_implementation(ATTN_IMPLEMENTATION)
        return base.config._attn_implementation == ATTN_IMPLEMENTATION

    # -- sizes

    @property
    def _param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _budget_bytes(self, memory_budget_gb: float | str | None) -> int:
        if memory_budget_gb is not None:
            return int(float(memory_budget_gb) * 2**30)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free // 2
        return 2 * 2**30

    def _row_bytes(self, cached: int, new: int, kept: int) -> int:
        """Memory of one batch row: its copy of the cache, activations of the new tokens, attention scores, and the
        kept logits (model dtype plus the float32 log-softmax)."""
        text = self.model.config.get_text_config(decoder=True)
        elem = torch.finfo(self._param_dtype).bits // 8
        hidden, inter = text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size)
        activations = new * elem * (6 * hidden + 3 * inter)
        scores = text.num_attention_heads * new * (cached + new) * 4
        logits = kept * text.vocab_size * (elem + 4)
        return (cached + new) * self._kv_per_token + activations + scores + logits

    # -- the forward passes

    def _prefix_cache(self, tokens: list[int], parent: DynamicCache | None = None,
                      parent_len: int = 0) -> DynamicCache | None:
        """The cache of `tokens`, computed on top of `parent` (the cache of its first `parent_len` tokens) when
        given; `parent` itself is only read."""
        if not tokens:
            return None
        new = tokens[parent_len:]
        ids = torch.tensor([new], dtype=torch.long, device=self.device)
        positions = torch.arange(parent_len, len(tokens), device=self.device).unsqueeze(0)
        past = self._expand(parent, 1) if parent is not None else None
        with torch.no_grad(), self._autocast():
            out = self.model(input_ids=ids, position_ids=positions, past_key_values=past, use_cache=True,
                             logits_to_keep=1)
        self.stats["prefix_positions"] += len(new)
        self.stats["prefixes"] += 1
        return out.past_key_values

    def _walk(self, groups: list[Group], seqs: list[list[int]], parent: DynamicCache | None = None,
              parent_len: int = 0) -> Iterator[tuple[Group, DynamicCache | None]]:
        """Every group with its prefix's cache, parents before children; a child's cache extends its parent's,
        and each cache is dropped once its subtree is done."""
        for group in groups:
            cache = (self._prefix_cache(seqs[group.any_member()][:group.prefix_len], parent, parent_len)
                     if group.prefix_len > parent_len else parent)
            yield group, cache
            yield from self._walk(group.children, seqs, cache, group.prefix_len)
            del cache

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                              enabled=self.mixed_precision_dtype is not None)

    def _expand(self, prefix: DynamicCache | None, rows: int) -> DynamicCache:
        """A new cache holding `rows` copies of the prefix; the shared one is only read (update() concatenates
        into fresh tensors), so it serves every batch of its group."""
        cache = DynamicCache(config=self.model.config)
        if prefix is not None:
            for layer, shared in zip(cache.layers, prefix.layers, strict=True):
                layer.update(shared.keys.expand(rows, -1, -1, -1), shared.values.expand(rows, -1, -1, -1))
        return cache

    def _forward(self, prefix: DynamicCache | None, prefix_len: int, suffixes: list[list[int]],
                 keep: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """Run right-padded suffixes on top of the prefix; returns logits at the suffix positions `keep`."""
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((rows, width), self.tokenizer.pad_token_id or 0, dtype=torch.long, device=self.device)
        mask = torch.zeros((rows, prefix_len + width), dtype=torch.long, device=self.device)
        mask[:, :prefix_len] = 1
        for i, suffix in enumerate(suffixes):
            ids[i, :len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            mask[i, prefix_len:prefix_len + len(suffix)] = 1
        cache = self._expand(prefix, rows)
        position_ids = torch.arange(prefix_len, prefix_len + width, device=self.device).unsqueeze(0)
        with torch.no_grad(), self._autocast():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                             use_cache=True, logits_to_keep=keep.to(self.device))
        self.stats["suffix_positions"] += int(mask[:, prefix_len:].sum())
        self.stats["forward_calls"] += 1
        return out.logits, out.past_key_values

    def _pack_bytes(self, prefix_len: int, tokens: int, kept: int) -> int:
        """Memory of one packed row: its cache (prefix + packed tokens), activations, attention scores and mask over
        the whole row, and the kept logits."""
        text = self.model.config.get_text_config(decoder=True)
        elem = torch.finfo(self._param_dtype).bits // 8
        hidden, inter = text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size)
        width = prefix_len + tokens
        # cascade attention reads the shared prefix in place; the full-mask path concatenates a copy of it
        cached = tokens if self._cascade else width
        return (cached * self._kv_per_token + tokens * elem * (6 * hidden + 3 * inter)
                + text.num_attention_heads * tokens * width * 4 + tokens * width * elem
                + kept * text.vocab_size * (elem + 4))

    def _packed_forward(self, prefix: DynamicCache | None, prefix_len: int, suffixes: list[list[int]],
                        needed: list[range]) -> tuple[torch.Tensor, list[list[int]]]:
        """Run several documents' suffixes as one row behind the shared prefix. Each token attends to the prefix and
        to its own document's earlier tokens (a block-diagonal causal mask) at its own position ids, so it computes
        what it would alone, and no document needs its own copy of the prefix's keys and values. Returns the
        logits at the `needed` suffix positions of every document, and each document's rows in them."""
        total = sum(len(s) for s in suffixes)
        # With cascade attention the mask covers the packed tokens only: every one of them sees the whole prefix.
        offset = 0 if self._cascade else prefix_len
        allowed = torch.zeros((total, offset + total), dtype=torch.bool)
        allowed[:, :offset] = True
        keep: list[int] = []
        columns: list[list[int]] = []
        blocks: list[tuple[int, int]] = []
        start = 0
        for suffix, need in zip(suffixes, needed, strict=True):
            n = len(suffix)
            if blocks and start + n - blocks[-1][0] <= SUFFIX_BLOCK_TOKENS:
                blocks[-1] = (blocks[-1][0], start + n)
            else:
                blocks.append((start, start + n))
            allowed[start:start + n, offset + start:offset + start + n] = torch.ones((n, n), dtype=torch.bool).tril()
            columns.append(list(range(len(keep), len(keep) + len(need))))
            keep += [start + p for p in need]
            start += n
        dtype = self._param_dtype
        # An additive mask (0 or the dtype's minimum) reads the same in the eager and the SDPA attention paths.
        mask = torch.zeros((1, 1, total, offset + total), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        ids = torch.tensor([[t for s in suffixes for t in s]], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(prefix_len, prefix_len + len(s)) for s in suffixes]).unsqueeze(0)
        inputs = {"input_ids": ids, "attention_mask": mask.to(self.device), "position_ids": positions.to(self.device),
                  "logits_to_keep": torch.tensor(keep, device=self.device)}
        with torch.no_grad(), self._autocast():
            if self._cascade:
                with prefix_keys_values(prefix, blocks) if prefix is not None else contextlib.nullcontext():
                    out = self.model(**inputs, use_cache=False)
            else:
                out = self.model(**inputs, past_key_values=self._expand(prefix, 1), use_cache=True)
        self.stats["suffix_positions"] += total
        self.stats["forward_calls"] += 1
        return out.logits[0], columns

    # -- lm-eval's request types

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, override_bs: int | None = None) -> list[tuple[float, bool]]:
        # hf's window: the last max_length + 1 tokens, the last one never fed (it is only predicted)
        units: dict[tuple[int, ...], _Unit] = {}
        plan: list[tuple[tuple[int, ...], list[int], int]] = []  # (unit key, continuation, start position)
        for _, context_enc, continuation_enc in requests:
            if not context_enc or not continuation_enc:
                raise HarnessError("A log-likelihood request has an empty context or continuation after "
                                   "tokenization; check the task's prompt and choices.")
            whole = context_enc + continuation_enc
            if len(whole) > self.max_length + 1:
                log.warning("Combined length of context (%d) and continuation (%d) exceeds max_length %d; truncating "
                            "%d tokens from the left, as lm-eval's hf model does.", len(context_enc),
                            len(continuation_enc), self.max_length, len(whole) - self.max_length - 1)
            inp = whole[-(self.max_length + 1):][:-1]
            self.stats["request_positions"] += len(inp)  # what one forward per request computes
            start = len(inp) - len(continuation_enc)
            key = tuple(inp)
            unit = units.setdefault(key, _Unit(tokens=inp, first_needed=start))
            unit.first_needed = min(unit.first_needed, start)
            plan.append((key, continuation_enc, start))

        keys = list(units)
        index = {k: i for i, k in enumerate(keys)}
        seqs = [units[k].tokens for k in keys]
        groups = group_by_prefix(seqs, [units[k].first_needed for k in keys])
        waiting: dict[int, list[int]] = defaultdict(list)  # unit -> the requests it answers
        for n, (key, _, _) in enumerate(plan):
            waiting[index[key]].append(n)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(seqs), disable=disable_tqdm or self.rank != 0, desc="Prefix-cached loglikelihood")
        for group, prefix in self._walk(groups, seqs):
            P = group.prefix_len
            members = sorted(group.members, key=lambda i: -len(seqs[i]))
            done = 0
            while done < len(members):
                batch, tokens, kept = [], 0, 0
                for i in members[done:]:
                    width, need = len(seqs[i]) - P, len(seqs[i]) - units[keys[i]].first_needed
                    fits = tokens + width <= PACK_TOKENS and (
                        self._pack_bytes(P, tokens + width, kept + need) <= self._budget)
                    if batch and not fits:
                        break
                    batch.append(i)
                    tokens, kept = tokens + width, kept + need
                needed = [range(units[keys[i]].first_needed - P, len(seqs[i]) - P) for i in batch]
                logits, columns = self._packed_forward(prefix, P, [seqs[i][P:] for i in batch], needed)
                logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                for i, cols in zip(batch, columns, strict=True):
                    first_needed = units[keys[i]].first_needed
                    for n in waiting.pop(i):  # answered now, so no unit's logits outlive its batch
                        _, continuation, start = plan[n]
                        at = start - first_needed
                        results[n] = self._answer(logprobs[cols[at:at + len(continuation)]], continuation)
                        self.cache_hook.add_partial("loglikelihood", requests[n][0], results[n])
                done += len(batch)
                pbar.update(len(batch))
        pbar.close()

        assert None not in results, "every request belongs to exactly one group"
        return results  # type: ignore[return-value]

    @staticmethod
    def _answer(scored: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
        """(log-likelihood, is_greedy) from the log-softmax rows of the continuation's positions, reduced as hf
        reduces them (a sum in the softmax dtype)."""
        cont = torch.tensor(continuation, dtype=torch.long, device=scored.device)
        greedy = bool((scored.argmax(dim=-1) == cont).all())
        return float(torch.gather(scored, 1, cont.unsqueeze(-1)).squeeze(-1).sum()), greedy

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise UnsupportedRequest("The harness-prefix model scores log-likelihood and generation requests only; "
                                 "run perplexity (loglikelihood_rolling) tasks with --backend hf.")

    def _context_tokens(self, context: str, max_ctx_len: int) -> list[int]:
        """The tokens hf's tok_batch_encode gives this context, left-truncated the same way."""
        special: dict[str, bool] = {}
        if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
            special = {"add_special_tokens": False}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        tokens = self.tokenizer(context, **special)["input_ids"]
        if len(tokens) > max_ctx_len:
            log.warning("Left truncation applied: %d context tokens cut to the last %d, as lm-eval's hf model does.",
                        len(tokens), max_ctx_len)
        return tokens[-max_ctx_len:]

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for n, req in enumerate(requests):
            by_kwargs[repr(sorted(req.args[1].items()))].append(n)
        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Prefix-cached generation")
        for members in by_kwargs.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0.0:
                raise UnsupportedRequest("The harness-prefix model decodes greedily only; run sampled generation with "
                                         "--backend hf.")
            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise HarnessError(f"max_gen_toks {max_gen_toks} leaves no room for a context in max_length "
                                   f"{self.max_length}; raise --max-length.")
            contexts = [self._context_tokens(requests[n].args[0], max_ctx_len) for n in members]
            for group, prefix in self._walk(group_by_prefix(contexts, [len(c) - 1 for c in contexts]), contexts):
                for n, text in self._generate_group(contexts, group, prefix, until, max_gen_toks).items():
                    request = requests[members[n]]
                    results[members[n]] = text
                    self.cache_hook.add_partial("generate_until", request.args, text)
                    pbar.update(1)
        pbar.close()
        return [r if r is not None else "" for r in results]

    def _generate_group(self, contexts: list[list[int]], group: Group, prefix: DynamicCache | None,
                        until: list[str], max_gen_toks: int) -> dict[int, str]:
        """Greedy decoding of one group's contexts from their shared prefix, a budget-sized batch at a time.

        Rows are right-padded after the prefix; each row's new tokens take the next cache slot with its own true
        position id, and its padding slots stay masked, so every row computes what it would alone.
        """
        P = group.prefix_len
        members = sorted(group.members, key=lambda i: -len(contexts[i]))
        eos = self._eos_ids()
        out: dict[int, str] = {}
        done = 0
        while done < len(members):
            width = len(contexts[members[done]]) - P
            count = rows_within_budget(self._budget, self._row_bytes(P + max_gen_toks, width, 1), len(members) - done)
            batch = members[done:done + count]
            suffixes = [contexts[i][P:] for i in batch]
            lengths = torch.tensor([len(s) for s in suffixes], device=self.device)
            width = max(len(s) for s in suffixes)
            keep = torch.tensor(sorted({len(s) - 1 for s in suffixes}))
            column = {p: c for c, p in enumerate(keep.tolist())}
            logits, cache = self._forward(prefix, P, suffixes, keep)
            next_tokens = [int(logits[r, column[len(s) - 1]].argmax()) for r, s in enumerate(suffixes)]
            generated: list[list[int]] = [[] for _ in batch]
            finished = [False] * len(batch)
            mask = torch.zeros((len(batch), P + width), dtype=torch.long, device=self.device)
            mask[:, :P] = 1
            for r, s in enumerate(suffixes):
                mask[r, P:P + len(s)] = 1
            for step in range(max_gen_toks):
                for r, token in enumerate(next_tokens):
                    if finished[r]:
                        continue
                    generated[r].append(token)
                    text = self.tok_decode(generated[r])
                    if token in eos or any(stop and stop in text for stop in until):
                        finished[r] = True
                if all(finished) or step == max_gen_toks - 1:
                    break
                mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=torch.long, device=self.device)], dim=1)
                ids = torch.tensor([[t] for t in next_tokens], dtype=torch.long, device=self.device)
                positions = (P + lengths + step).unsqueeze(1)
                with torch.no_grad(), self._autocast():
                    step_out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                          past_key_values=cache, use_cache=True, logits_to_keep=1)
                self.stats["decode_positions"] += len(batch)
                cache = step_out.past_key_values
                next_tokens = step_out.logits[:, -1].argmax(dim=-1).tolist()
            for r, i in enumerate(batch):
                out[i] = postprocess_generated_text(self.tok_decode(generated[r]), stop=until, think_end_token=None)
            done += len(batch)
        return out
