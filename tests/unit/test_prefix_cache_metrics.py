"""vLLM's prefix-cache counters read from its Prometheus text: summed over engines, `_created` samples and other
counters ignored, and the difference of two readings as queried tokens, hit tokens and hit rate."""

from __future__ import annotations

from manyicl.harness.serve import parse_prefix_cache_counters, prefix_cache_usage

EXPOSITION = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 300.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7646e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 896.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 0.0
vllm:external_prefix_cache_hits_total{engine="0",model_name="m"} 50.0
vllm:num_requests_running{engine="0",model_name="m"} 3.0
"""


def test_counters_are_summed_over_engines_and_other_samples_ignored():
    assert parse_prefix_cache_counters(EXPOSITION) == {"queries": 1500.0, "hits": 896.0}


def test_a_server_without_the_counters_reads_as_zero():
    assert parse_prefix_cache_counters("# nothing here\nvllm:num_requests_running 0.0\n") == {"queries": 0.0,
                                                                                             "hits": 0.0}


def test_usage_is_the_difference_of_two_readings():
    before = {"queries": 100.0, "hits": 20.0}
    after = parse_prefix_cache_counters(EXPOSITION)
    assert prefix_cache_usage(before, after) == {"queried_tokens": 1400.0, "hit_tokens": 876.0, "hit_rate": 0.6257}


def test_no_queries_is_a_zero_rate_and_a_missing_reading_is_none():
    same = {"queries": 10.0, "hits": 5.0}
    assert prefix_cache_usage(same, same)["hit_rate"] == 0.0
    assert prefix_cache_usage(None, same) is None and prefix_cache_usage(same, None) is None
