"""The prefix-reusing scorer (`harness-prefix`) gives what lm-eval's own `hf` model gives on the same requests, in
float32: every per-choice log-likelihood within 1e-3 with the same is_greedy, the same accuracy, identical greedy
generations; for one-token, multi-token and per-example choices and generation, at 0, k and `many` shots (where
documents use different numbers of demonstrations), for a full model and a LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from manyicl.harness.lm_eval_bridge import write_lm_eval_task
from manyicl.harness.prompts import build_prompts
from manyicl.tasks.registry import load_examples, parse_task_list
from manyicl.train.sequences import Renderer
from tests.helpers import shaken_model

pytestmark = pytest.mark.integration

TASKS = ["commonsense_qa", "trec", "arc_easy", "asdiv"]  # one-token, multi-token, per-example choices, generation
SHOTS = ["0", "2", "many"]  # 2: every document fits two whole demonstrations at MAX_LENGTH (k shots must fit all)
MAX_LENGTH = 320  # small, so `many` fits a different number of demonstrations for different documents
LIMIT = 6
TOLERANCE = 1e-3
NOISE = 0.2


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its weights shaken, so choices' log-likelihoods differ between documents and greedy
    generation says more than newlines."""
    return shaken_model(tiny_model, tmp_path_factory.mktemp("noisy-tiny"), NOISE)


@pytest.fixture(scope="module")
def adapter(model, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) weights on every linear layer of the shaken model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(4)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    peft_model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                init_lora_weights=False))
    target = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def tasks(model, tiny_data, tmp_path_factory) -> tuple[Path, list[str], dict[str, list[int]]]:
    """The harness's own prompts for every (task, shots) written as lm-eval tasks; with the shots each used."""
    from transformers import AutoTokenizer

    renderer = Renderer(AutoTokenizer.from_pretrained(model), "chat")
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    names, used = [], {}
    for task in parse_task_list(TASKS):
        data = load_examples(task, str(tiny_data))
        for shots in SHOTS:
            prompts = build_prompts(data, renderer, shots, 1234, MAX_LENGTH, LIMIT)
            name = write_lm_eval_task(prompts, renderer, folder)
            names.append(name)
            used[name] = prompts.shots_used
    return folder, names, used


def _evaluate(kind, args: dict, folder: Path, names: list[str]) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import manyicl.harness.prefix_scorer  # noqa: F401 - registers `harness-prefix`

    return lm_eval.simple_evaluate(model=kind, model_args=args, tasks=names, batch_size=4, device="cpu",
                                   task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                   log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0, bootstrap_iters=0, verbosity="WARNING")


def _assert_same(reference: dict, candidate: dict, names: list[str]) -> dict[str, int]:
    """Compare per-sample responses; returns how many choices / generations were compared, by kind."""
    compared = {"choices": 0, "generations": 0}
    for name in names:
        ref = sorted(reference["samples"][name], key=lambda s: s["doc_id"])
        got = sorted(candidate["samples"][name], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in ref] == [s["doc_id"] for s in got]
        for r, g in zip(ref, got, strict=True):
            for (r_resp,), (g_resp,) in zip(r["resps"], g["resps"], strict=True):
                if isinstance(r_resp, str):
                    assert g_resp == r_resp, f"{name} doc {r['doc_id']}: generation differs"
                    compared["generations"] += 1
                else:
                    assert abs(float(g_resp[0]) - float(r_resp[0])) <= TOLERANCE, (
                        f"{name} doc {r['doc_id']}: log-likelihood {g_resp[0]} vs hf {r_resp[0]}")
                    assert bool(g_resp[1]) == bool(r_resp[1]), f"{name} doc {r['doc_id']}: is_greedy differs"
                    compared["choices"] += 1
        for metric in ("acc,none", "exact_match,none"):
            if metric in reference["results"][name]:
                assert candidate["results"][name][metric] == reference["results"][name][metric], name
    return compared


def test_prompts_cover_every_case(model, tasks):
    """The comparison below means something: one-token and multi-token choices, and `many` documents that use
    different numbers of demonstrations."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    _, _, used = tasks
    assert {len(tok(c, add_special_tokens=False).input_ids) for c in "ABCD"} == {1}  # commonsense_qa
    assert min(len(tok(c, add_special_tokens=False).input_ids) for c in ("abbreviation", "description")) > 1  # trec
    varying = {name for name, counts in used.items() if len(set(counts)) > 1}
    assert "harness_commonsense_qa_manyshot_s1234" in varying, used
    assert set(used["harness_trec_2shot_s1234"]) == {2}


def test_matches_hf_full_model(model, tasks):
    folder, names, _ = tasks
    args = {"pretrained": str(model), "dtype": "float32", "max_length": MAX_LENGTH}
    from manyicl.harness.prefix_scorer import PrefixScorerLM

    reference = _evaluate("hf", args, folder, names)
    scorer = PrefixScorerLM(**args, device="cpu")
    candidate = _evaluate(scorer, {}, folder, names)
    compared = _assert_same(reference, candidate, names)
    assert compared["choices"] > 100 and compared["generations"] == LIMIT * len(SHOTS)
    # and it got there by sharing prefixes: far fewer positions than one full forward per distinct request
    assert scorer.stats["prefixes"] >= len(names) - 1
    computed = scorer.stats["prefix_positions"] + scorer.stats["suffix_positions"]
    assert computed < 0.5 * scorer.stats["request_positions"], scorer.stats


def test_matches_hf_lora_adapter(model, adapter, tasks):
    folder, names, _ = tasks
    subset = [n for n in names if n.startswith(("harness_trec", "harness_asdiv"))]
    args = {"pretrained": str(model), "peft": str(adapter), "dtype": "float32", "max_length": MAX_LENGTH}
    reference = _evaluate("hf", args, folder, subset)
    candidate = _evaluate("harness-prefix", args, folder, subset)
    plain = _evaluate("harness-prefix", {k: v for k, v in args.items() if k != "peft"}, folder, subset[:1])
    _assert_same(reference, candidate, subset)
    # the adapter really changed the numbers, so the comparison above tested it
    first = lambda result: result["samples"][subset[0]][0]["resps"][0][0][0]  # noqa: E731
    assert abs(first(plain) - first(candidate)) > 1e-3


def test_small_memory_budget_gives_same_numbers(model, tasks):
    """A budget that fits one row per batch (many batches per shared prefix) changes nothing."""
    folder, names, _ = tasks
    subset = [n for n in names if n.startswith("harness_trec")]
    args = {"pretrained": str(model), "dtype": "float32", "max_length": MAX_LENGTH}
    wide = _evaluate("harness-prefix", args, folder, subset)
    narrow = _evaluate("harness-prefix", args | {"memory_budget_gb": 1e-6}, folder, subset)
    _assert_same(wide, narrow, subset)


def test_rolling_loglikelihood_is_refused(model):
    from manyicl.harness.errors import HarnessError
    from manyicl.harness.prefix_scorer import PrefixScorerLM

    lm = PrefixScorerLM(pretrained=str(model), dtype="float32", device="cpu")
    with pytest.raises(HarnessError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([])


def test_evaluate_auto_picks_prefix_on_cpu_with_hf_scores(model, tiny_data, tmp_path):
    """`harness evaluate --backend auto` on a CPU scores with the prefix scorer, says why in the manifest, and gives
    the scores `--backend hf` gives; the records name the backend."""
    import json

    from tests.helpers import run_harness

    def evaluate(backend: str) -> tuple[dict, list[dict]]:
        out = tmp_path / backend
        code, _, err = run_harness(["evaluate", "--model", str(model), "--tasks", "trec,asdiv", "--shots", "0,many",
                                    "--limit", "4", "--data-dir", str(tiny_data), "--max-length", str(MAX_LENGTH),
                                    "--dtype", "float32", "--backend", backend, "-o", str(out)])
        assert code == 0, err[-3000:]
        records = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
        return json.loads((out / "manifest.json").read_text()), records

    auto_manifest, auto_records = evaluate("auto")
    hf_manifest, hf_records = evaluate("hf")
    assert auto_manifest["backend"] == "prefix" and "no GPU" in auto_manifest["backend_reason"]
    assert hf_manifest["backend"] == "hf" and hf_manifest["backend_reason"] == "--backend hf"
    key = lambda r: (r["task"], r["shots"])  # noqa: E731
    assert len(auto_records) == 4
    for got, ref in zip(sorted(auto_records, key=key), sorted(hf_records, key=key), strict=True):
        assert key(got) == key(ref) and got["value"] == ref["value"] and got["backend"] == "prefix"
