"""Cascade attention for packed documents behind one shared prefix: attention over the prefix without a mask and
without repeating key/value heads, attention over the packed suffix with its block-diagonal mask, merged by
log-sum-exp; plugged into transformers' attention interface for the prefix scorer's forwards only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "harness_cascade"

# The shared prefix's per-layer (keys, values) and the packed suffix's independent blocks for the forward running in
# this context; None outside `prefix_keys_values`, where the registered function is plain SDPA. A context variable,
# so a prefix set for one model's forward is never seen by another model or another thread.
_PREFIX: ContextVar[tuple[Any, list[tuple[int, int]] | None] | None] = ContextVar("harness_cascade_prefix",
                                                                                  default=None)


def _attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q (B, H, M, D) over k, v (B, H, N, D): the output in q's dtype and the float32
    log-sum-exp of each query's scaled scores (B, H, M). `mask` is additive or boolean, broadcastable to (B, H, M, N).
    """
    if q.device.type == "cpu":
        # torch's CPU flash kernel: blocked, never materialises the scores, and returns the log-sum-exp
        # the kernel takes an additive mask of the query's dtype only
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
        elif mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                               scale=scale)
        return out, lse.float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v.float())
    return out.to(q.dtype), lse


def _fold(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H_kv, G*T, D): query head kv*G + g (repeat_kv's order) becomes rows g*T .. g*T + T - 1."""
    B, H, T, D = x.shape
    return x.reshape(B, kv_heads, (H // kv_heads) * T, D)


def cascade_attention(query: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor,
                      keys: torch.Tensor, values: torch.Tensor, suffix_mask: torch.Tensor | None,
                      scale: float, blocks: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Attention of query (B, H, T, D) over a shared prefix (B or 1, H_kv, P, D) followed by the suffix's own keys
    and values (B, H_kv, T, D), where every query sees the whole prefix and `suffix_mask` (broadcastable to
    (B, 1, T, T), additive or boolean) says which suffix keys it sees. Returns (B, H, T, D) in query's dtype.

    Equal to softmax attention over the concatenated keys with the mask [all visible | suffix_mask]: each part is
    a softmax over its own keys, and out = (o1 e^l1 + o2 e^l2) / (e^l1 + e^l2) with l the log-sum-exps. The query
    heads of a key/value group are folded into the query-length dimension, so each key/value head is read once
    (one GEMM per KV head, no repeat_kv copy).

    `blocks`, if given, are (start, end) spans of the suffix that see no key outside themselves (packed documents,
    several to a block): the suffix part then runs block by block instead of over the whole masked square.
    """
    B, H, T, D = query.shape
    kv_heads = keys.shape[1]
    groups = H // kv_heads
    if prefix_keys.shape[0] != B:
        prefix_keys, prefix_values = prefix_keys.expand(B, -1, -1, -1), prefix_values.expand(B, -1, -1, -1)
    out_prefix, lse_prefix = _attention_with_lse(_fold(query, kv_heads), prefix_keys, prefix_values, None, scale)
    out_prefix, lse_prefix = out_prefix.reshape(B, H, T, D), lse_prefix.reshape(B, H, T)
    if suffix_mask is not None:
        suffix_mask = suffix_mask.expand(B, 1, T, T)
    out_suffix = torch.empty_like(query)
    lse_suffix = torch.empty((B, H, T), dtype=torch.float32, device=query.device)
    for start, end in blocks or [(0, T)]:
        n = end - start
        mask = None
        if suffix_mask is not None:  # folded row g*n + t is query t of head g
            mask = suffix_mask[:, :, start:end, start:end].repeat(1, 1, groups, 1)
        out, lse = _attention_with_lse(_fold(query[:, :, start:end], kv_heads), keys[:, :, start:end],
                                       values[:, :, start:end], mask, scale)
        out_suffix[:, :, start:end] = out.reshape(B, H, n, D)
        lse_suffix[:, :, start:end] = lse.reshape(B, H, n)
    top = torch.maximum(lse_prefix, lse_suffix)
    w_prefix = torch.exp(lse_prefix - top).unsqueeze(-1)
    w_suffix = torch.exp(lse_suffix - top).unsqueeze(-1)
    merged = (out_prefix.float() * w_prefix + out_suffix.float() * w_suffix) / (w_prefix + w_suffix)
    return merged.to(query.dtype)


def cascade_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, dropout: float = 0.0,
                              scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature (see `sdpa_attention_forward`). Inside `prefix_keys_values`,
    `key`/`value` are the packed suffix's own and `attention_mask` its 4D block-diagonal mask; outside, plain SDPA."""
    current = _PREFIX.get()
    if current is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prefix, blocks = current
    layer = prefix.layers[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = cascade_attention(query, layer.keys, layer.values, key, value, attention_mask, scale, blocks)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, cascade_attention_forward)
# Outside the cascade (prefix runs, generation) the model builds SDPA's masks from 2D padding masks.
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def prefix_keys_values(cache: Any, blocks: list[tuple[int, int]] | None = None) -> Iterator[None]:
    """Within this block, forwards of a model using `ATTN_IMPLEMENTATION` attend over `cache` (a transformers
    cache whose `layers[i].keys/values` hold the prefix) before their own tokens, without copying it; `blocks` are
    spans of their own tokens that see nothing outside themselves (see `cascade_attention`)."""
    token = _PREFIX.set((cache, blocks))
    try:
        yield
    finally:
        _PREFIX.reset(token)
