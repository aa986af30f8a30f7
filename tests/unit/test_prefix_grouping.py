"""The prefix scorer's pure parts: grouping token sequences by shared prefix, batch sizing by memory, the KV-cache
arithmetic, and the `--backend auto` choice."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from manyicl.harness.backend_choice import auto_backend
from manyicl.harness.prefix_scorer import Group, group_by_prefix, kv_bytes_per_token, rows_within_budget


def _as_sets(groups: list[Group]) -> set[tuple[int, frozenset[int]]]:
    return {(g.prefix_len, frozenset(g.members)) for g in groups}


def test_documents_of_one_setting_share_the_demonstrations():
    demos = list(range(100, 160))  # 60 tokens of demonstrations
    seqs = [demos + [1, 2, 3], demos + [4, 5], demos + [6, 7, 8, 9]]
    assert _as_sets(group_by_prefix(seqs, [len(s) - 1 for s in seqs])) == {(60, frozenset({0, 1, 2}))}


def test_settings_with_different_demonstrations_get_their_own_prefix():
    a, b = list(range(100, 150)), list(range(200, 240))
    seqs = [a + [1], b + [2], a + [3, 4], b + [5, 6]]
    assert _as_sets(group_by_prefix(seqs, [len(s) - 1 for s in seqs])) == {(50, frozenset({0, 2})),
                                                                           (40, frozenset({1, 3}))}


def test_many_shots_share_the_common_part_of_different_counts():
    """With `many`, one document fits 30 demonstrations' tokens and another 29: they still share 29's worth."""
    demos = list(range(100, 400))
    seqs = [demos[:290] + [1, 2], demos[:300] + [3, 4], demos[:300] + [5]]
    groups = group_by_prefix(seqs, [len(s) - 1 for s in seqs])
    assert _as_sets(groups) == {(290, frozenset({0, 1, 2}))}


def test_prefix_stops_before_the_first_needed_position():
    """A continuation's first logit comes from the last context token, so that token is never inside the prefix,
    even when two requests are otherwise identical up to there."""
    ctx = list(range(10, 50))
    seqs = [ctx + [7], ctx + [7, 8]]
    caps = [len(ctx) - 1, len(ctx) - 1]
    assert _as_sets(group_by_prefix(seqs, caps)) == {(len(ctx) - 1, frozenset({0, 1}))}


def test_unrelated_sequences_share_one_batch_without_a_prefix():
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert _as_sets(group_by_prefix(seqs, [len(s) - 1 for s in seqs])) == {(0, frozenset({0, 1, 2}))}
    assert group_by_prefix([], []) == []


def test_kv_bytes_per_token_for_llama3_8b_in_bf16():
    """The docs' arithmetic: 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token, 1 GiB at 8k."""
    config = SimpleNamespace(num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_size=4096,
                             num_hidden_layers=32)
    per_token = kv_bytes_per_token(config, torch.bfloat16)
    assert per_token == 131072 and per_token * 8192 == 2**30
    assert kv_bytes_per_token(config, torch.float32) == 2 * per_token


def test_rows_within_budget():
    assert rows_within_budget(10_000, 1_000, 50) == 10
    assert rows_within_budget(10_000, 1_000, 4) == 4
    assert rows_within_budget(10, 1_000, 4) == 1  # one row is always attempted


def test_auto_backend():
    assert auto_backend({"multiple_choice"}, on_gpu=False)[0] == "prefix"
    assert auto_backend({"multiple_choice", "generation"}, on_gpu=False)[0] == "prefix"
    assert auto_backend({"multiple_choice"}, on_gpu=True, vllm_ok=True)[0] == "prefix"
    assert auto_backend({"generation"}, on_gpu=True, vllm_ok=True)[0] == "vllm"
    assert auto_backend({"generation"}, on_gpu=True, vllm_ok=False)[0] == "prefix"


def test_documents_fitting_one_more_demonstration_share_it_in_a_nested_group():
    """`many`: most documents fit 44 demonstrations, some 45; the 45th is computed once for those, as a child
    group whose prefix extends the common one, not once per document."""
    demos = list(range(1000, 1450))  # 45 demonstrations of 10 tokens
    seqs = [demos[:440] + [1, q, 2, 3] for q in range(10, 16)] + [demos + [1, q, 2] for q in range(20, 26)]
    groups = group_by_prefix(seqs, [len(s) - 1 for s in seqs])
    assert len(groups) == 1
    root = groups[0]
    # the common part stops where the queries (token 1) and the 45th demonstration (token 1440) begin
    assert root.prefix_len == 440
    assert sorted(root.members) == list(range(6))
    assert [(child.prefix_len, sorted(child.members)) for child in root.children] == [(451, list(range(6, 12)))]
    assert sorted(root.all_members()) == list(range(12))


def test_a_single_longer_document_does_not_get_its_own_group():
    """One document with an extra demonstration gains nothing from its own prefix (it would pay a forward call)."""
    demos = list(range(1000, 1450))
    seqs = [demos[:440] + [1, q, 2] for q in range(10, 16)] + [demos + [1, 30, 2]]
    groups = group_by_prefix(seqs, [len(s) - 1 for s in seqs])
    assert [(g.prefix_len, sorted(g.members), g.children) for g in groups] == [(440, list(range(7)), [])]
