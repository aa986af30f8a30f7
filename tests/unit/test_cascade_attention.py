"""Cascade attention (a shared prefix without a mask, the packed suffix with its own mask, merged by log-sum-exp)
equals plain SDPA over the concatenated keys with the full mask; outside its context it is plain SDPA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from manyicl.harness.cascade_attention import cascade_attention, cascade_attention_forward, prefix_keys_values


def _block_causal(lengths: list[int]) -> torch.Tensor:
    total = sum(lengths)
    allowed = torch.zeros((total, total), dtype=torch.bool)
    start = 0
    for n in lengths:
        allowed[start:start + n, start:start + n] = torch.ones((n, n), dtype=torch.bool).tril()
        start += n
    return allowed


def _case(dtype: torch.dtype, prefix: int, lengths: list[int], heads: int = 6, kv_heads: int = 2, dim: int = 16):
    generator = torch.Generator().manual_seed(prefix + len(lengths))
    total = sum(lengths)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    q, kp, vp = rand(1, heads, total, dim), rand(1, kv_heads, prefix, dim), rand(1, kv_heads, prefix, dim)
    ks, vs = rand(1, kv_heads, total, dim), rand(1, kv_heads, total, dim)
    allowed = _block_causal(lengths)
    full = torch.cat([torch.ones((total, prefix), dtype=torch.bool), allowed], dim=1)
    groups = heads // kv_heads
    keys = torch.cat([kp, ks], dim=2).repeat_interleave(groups, dim=1)
    values = torch.cat([vp, vs], dim=2).repeat_interleave(groups, dim=1)
    reference = F.scaled_dot_product_attention(q.double(), keys.double(), values.double(), attn_mask=full,
                                               scale=dim**-0.5)
    return q, kp, vp, ks, vs, allowed, reference


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize(("prefix", "lengths"), [(300, [7, 1, 12, 5]), (40, [33]), (1, [3, 4])])
def test_equals_sdpa_with_the_full_mask(dtype, tolerance, prefix, lengths):
    q, kp, vp, ks, vs, allowed, reference = _case(dtype, prefix, lengths)
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    ends = [sum(lengths[:i + 1]) for i in range(len(lengths))]
    per_document = list(zip([0] + ends[:-1], ends, strict=True))
    for mask in (additive[None, None], allowed[None, None]):
        for blocks in (None, per_document, [(0, ends[-1])]):
            got = cascade_attention(q, kp, vp, ks, vs, mask, q.shape[-1] ** -0.5, blocks)
            assert got.dtype == dtype and got.shape == q.shape
            assert (got.double() - reference).abs().max().item() <= tolerance


def test_attention_function_reads_the_prefix_only_inside_its_context():
    q, kp, vp, ks, vs, allowed, reference = _case(torch.float32, 50, [5, 9])
    module = SimpleNamespace(layer_idx=1, num_key_value_groups=3, is_causal=True, training=False)
    other = torch.zeros_like(kp)
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=other, values=other), SimpleNamespace(keys=kp, values=vp)])
    mask = allowed[None, None]
    with prefix_keys_values(cache):
        inside, _ = cascade_attention_forward(module, q, ks, vs, mask, scaling=q.shape[-1] ** -0.5)
    assert (inside.transpose(1, 2).double() - reference).abs().max().item() <= 1e-5
    # outside: plain SDPA over the suffix alone, which differs from attention that also sees the prefix
    outside, _ = cascade_attention_forward(module, q, ks, vs, mask, scaling=q.shape[-1] ** -0.5)
    suffix_only = F.scaled_dot_product_attention(q, ks.repeat_interleave(3, 1), vs.repeat_interleave(3, 1),
                                                 attn_mask=mask, scale=q.shape[-1] ** -0.5)
    assert torch.allclose(outside.transpose(1, 2), suffix_only, atol=1e-6)
    assert (outside.transpose(1, 2).double() - reference).abs().max().item() > 1e-2
