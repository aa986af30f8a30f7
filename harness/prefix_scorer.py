"""A many-shot scorer for lm-eval that computes each shared demonstration prefix once and scores every document on
top of its key/value cache (`model="harness-prefix"`), with the same tokens and numbers as lm-eval's `hf` model."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
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

from harness.errors import HarnessError

log = logging.getLogger(__name__)

# A forward call costs about as much as this many extra tokens (kernel launches, cache copies): a prefix shared by
# fewer documents than it saves is not worth a separate call.
CALL_OVERHEAD_TOKENS = 16
# Suffix tokens packed into one row behind a shared prefix. More wastes attention on masked pairs of documents,
# fewer runs the attention kernel on slivers: on a 2-core CPU, 8 documents of 65 tokens over a 2,000-token prefix
# cost 2.6 ms per document per layer against 3.7 for 2 and 4.0 for 32 (bench/RESULTS.md).
PACK_TOKENS = 512
# Recursion over the sorted requests stops splitting below this depth (a chain of ever longer prefixes).
_MAX_SPLIT_DEPTH = 200


class UnsupportedRequest(HarnessError, NotImplementedError):
    """A request type this scorer does not serve; the message names the backend that does."""


# --------------------------------------------------------------------------- grouping (pure)


@dataclass
class Group:
    """Token sequences that share their first `prefix_len` tokens: the prefix is run once for all of them."""

    prefix_len: int
    members: list[int] = field(default_factory=list)  # indices into the sequences given to `group_by_prefix`


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def group_by_prefix(seqs: Sequence[Sequence[int]], caps: Sequence[int],
                    overhead: int = CALL_OVERHEAD_TOKENS) -> list[Group]:
    """Split token sequences into groups that each share one prefix, choosing the split that needs the fewest token
    positions computed (each group pays its prefix once, plus `overhead` per forward call).

    `caps[i]` bounds how much of sequence i may be in a shared prefix (its first position whose output is needed
    must stay outside, so its logits are computed). Sorted sequences sharing a prefix sit side by side, and the
    longest prefix of a run is the smallest common prefix of its neighbours, so splitting at the smallest
    neighbour prefix, recursively, finds the best grouping on that tree.
    """
    if not seqs:
        return []
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    neighbour = [_lcp(seqs[order[j]], seqs[order[j + 1]]) for j in range(len(order) - 1)]
    lengths = [len(seqs[i]) for i in order]
    capped = [caps[i] for i in order]
    prefix_sums = [0]
    for n in lengths:
        prefix_sums.append(prefix_sums[-1] + n)

    def best(a: int, b: int, depth: int) -> tuple[int, list[Group]]:
        total = prefix_sums[b] - prefix_sums[a]
        if b - a == 1:
            return total + overhead, [Group(0, [order[a]])]
        shared = min(min(neighbour[a:b - 1]), min(capped[a:b]))
        whole = shared + total - (b - a) * shared + 2 * overhead
        as_one = (whole, [Group(shared, [order[i] for i in range(a, b)])])
        if depth >= _MAX_SPLIT_DEPTH:
            return as_one
        cut = min(range(a, b - 1), key=lambda j: neighbour[j])
        left_cost, left = best(a, cut + 1, depth + 1)
        right_cost, right = best(cut + 1, b, depth + 1)
        return as_one if whole <= left_cost + right_cost else (left_cost + right_cost, left + right)

    groups = best(0, len(order), 0)[1]
    # sequences that share nothing worth caching still share a batch
    unshared = [i for g in groups if g.prefix_len == 0 for i in g.members]
    return [g for g in groups if g.prefix_len > 0] + ([Group(0, unshared)] if unshared else [])


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
        self._budget = self._budget_bytes(memory_budget_gb)
        caches = DynamicCache(config=self.model.config)
        if any(getattr(layer, "is_sliding", False) for layer in caches.layers):
            raise HarnessError("The prefix scorer supports full-attention models only (this one has sliding-window "
                               "layers); use --backend hf.")
        self._kv_per_token = kv_bytes_per_token(self.model.config, self._param_dtype)
        self.stats: dict[str, int] = defaultdict(int)  # positions computed, prefixes run: read by the benchmark

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

    def _prefix_cache(self, tokens: list[int]) -> DynamicCache | None:
        if not tokens:
            return None
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        with torch.no_grad(), self._autocast():
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.stats["prefix_positions"] += len(tokens)
        self.stats["prefixes"] += 1
        return out.past_key_values

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
        return (width * self._kv_per_token + tokens * elem * (6 * hidden + 3 * inter)
                + text.num_attention_heads * tokens * width * 4 + tokens * width * elem
                + kept * text.vocab_size * (elem + 4))

    def _packed_forward(self, prefix: DynamicCache | None, prefix_len: int, suffixes: list[list[int]],
                        needed: list[range]) -> tuple[torch.Tensor, list[list[int]]]:
        """Run several documents' suffixes as one row behind the shared prefix. Each token attends to the prefix and
        to its own document's earlier tokens (a block-diagonal causal mask) at its own position ids, so it computes
        what it would alone, and no document needs its own copy of the prefix's keys and values. Returns the
        logits at the `needed` suffix positions of every document, and each document's rows in them."""
        total = sum(len(s) for s in suffixes)
        allowed = torch.zeros((total, prefix_len + total), dtype=torch.bool)
        allowed[:, :prefix_len] = True
        keep: list[int] = []
        columns: list[list[int]] = []
        start = 0
        for suffix, need in zip(suffixes, needed, strict=True):
            n = len(suffix)
            allowed[start:start + n, prefix_len + start:prefix_len + start + n] = torch.ones((n, n), dtype=torch.bool).tril()
            columns.append(list(range(len(keep), len(keep) + len(need))))
            keep += [start + p for p in need]
            start += n
        dtype = self._param_dtype
        # An additive mask (0 or the dtype's minimum) reads the same in the eager and the SDPA attention paths.
        mask = torch.zeros((1, 1, total, prefix_len + total), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        ids = torch.tensor([[t for s in suffixes for t in s]], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(prefix_len, prefix_len + len(s)) for s in suffixes]).unsqueeze(0)
        with torch.no_grad(), self._autocast():
            out = self.model(input_ids=ids, attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
                             past_key_values=self._expand(prefix, 1), use_cache=True,
                             logits_to_keep=torch.tensor(keep, device=self.device))
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
        for group in groups:
            P = group.prefix_len
            prefix = self._prefix_cache(seqs[group.members[0]][:P])
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
            del prefix
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
            for group in group_by_prefix(contexts, [len(c) - 1 for c in contexts]):
                for n, text in self._generate_group(contexts, group, until, max_gen_toks).items():
                    request = requests[members[n]]
                    results[members[n]] = text
                    self.cache_hook.add_partial("generate_until", request.args, text)
                    pbar.update(1)
        pbar.close()
        return [r if r is not None else "" for r in results]

    def _generate_group(self, contexts: list[list[int]], group: Group, until: list[str],
                        max_gen_toks: int) -> dict[int, str]:
        """Greedy decoding of one group's contexts from their shared prefix, a budget-sized batch at a time.

        Rows are right-padded after the prefix; each row's new tokens take the next cache slot with its own true
        position id, and its padding slots stay masked, so every row computes what it would alone.
        """
        P = group.prefix_len
        prefix = self._prefix_cache(contexts[group.members[0]][:P])
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
