"""Many-shot evaluation speed, one run, same model, same documents: documents/s at 0, 8, 32 and `many` shots for
(a) lm-eval's default few-shot path (a plain lm-eval task, `num_fewshot=k`, demonstrations drawn per document by
its own sampler), (b) today's path (the harness's fixed demonstrations, lm-eval `hf`), (c) the prefix-reusing
scorer (`harness-prefix`), (d) the vLLM server (lm-eval `local-completions`); plus the limit: the zero-shot time
of the same documents plus one forward of each setting's shared prefix.

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/eval_many_shot.py [--quick] [--no-vllm]
       [--model M] [--task sst2] [--docs 100] [--slow-docs 20] [--max-length 2048] [--dtype bfloat16]

(a), (b) and (d) pay the whole prompt for every document, so their time per document does not depend on how
many documents there are; they are timed on the first `--slow-docs` documents. (c) pays each shared prefix once,
so it is timed on all `--docs` documents (the number the goals name). Goals at >= 32 shots and >= 100 documents:
(c) >= 10x faster than (a); (c)'s many-shot time <= 1.5x the limit. Peak memory is the process's resident peak
after each path (the paths run (c) first, so its figure is its own); vLLM's server is a separate process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

from manyicl.harness.runs import hardware_line

SHOTS_QUICK = ["0", "8", "32", "many"]
SHOTS_FULL = ["0", "8", "32", "128", "many"]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _plain_lm_eval_task(data, renderer, folder: Path, docs: int) -> str:
    """The task as lm-eval's own few-shot path sees it: train and test rows, lm-eval's sampler picks the
    demonstrations for every document. Rendered in the same chat frame as the harness's prompts, so only the
    choice of demonstrations (and their sharing) differs."""
    f = renderer.frame
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", data.train), ("test", data.test[:docs])):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for ex in rows:
                out.write(json.dumps({"input": ex.input, "choices": [renderer.answer_text(c) for c in ex.choices],
                                      "gold": ex.gold}) + "\n")
    name = f"plain_{data.task.name}"
    lines = [f"task: {name}", "dataset_path: json",
             f"dataset_kwargs: {{data_files: {{train: {json.dumps(str(folder / 'train.jsonl'))}, "
             f"test: {json.dumps(str(folder / 'test.jsonl'))}}}}}",
             "training_split: train", "fewshot_split: train", "test_split: test",
             "output_type: multiple_choice", f"description: {json.dumps(f.header)}",
             f"doc_to_text: {json.dumps('{{input}}' + f.mid)}", "doc_to_choice: choices", "doc_to_target: gold",
             'target_delimiter: ""', f"fewshot_delimiter: {json.dumps(f.close + f.sep)}",
             "metric_list:", "  - {metric: acc, aggregation: mean, higher_is_better: true}", "metadata: {version: 1}"]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def _timed(model, tasks: list[str], folder: Path, **kwargs) -> tuple[float, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    started = time.perf_counter()
    result = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=True,
                                     bootstrap_iters=0, verbosity="ERROR", random_seed=0, numpy_random_seed=0,
                                     torch_random_seed=0, fewshot_random_seed=1234, **kwargs)
    return time.perf_counter() - started, result


def _prefix_forward_seconds(lm, prompts, repeats: int = 2) -> tuple[float, int]:
    """One forward of the prefix every document of the setting shares (the best of `repeats`)."""
    import torch

    token_lists = [lm.tok_encode(d.prompt) for d in prompts.docs]
    shared = token_lists[0]
    for tokens in token_lists[1:]:
        n = 0
        while n < min(len(shared), len(tokens)) and shared[n] == tokens[n]:
            n += 1
        shared = shared[:n]
    if not shared:
        return 0.0, 0
    ids = torch.tensor([shared], device=lm.device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        best = min(best, time.perf_counter() - started)
    return best, len(shared)


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (converted once)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--shots", default=None, help="default: 0,8,32,many (--quick) or 0,8,32,128,many")
    parser.add_argument("--docs", type=int, default=None, help="documents for (c) and the limit (default 100/300)")
    parser.add_argument("--slow-docs", type=int, default=None, help="documents for (a), (b), (d) (default 20/100)")
    parser.add_argument("--max-length", type=int, default=None, help="context for `many` (default 2048/8192)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-vllm", action="store_true", help="skip (d)")
    parser.add_argument("--quick", action="store_true", help="under 15 minutes on a 2-core CPU")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    docs = args.docs or (100 if args.quick else 300)
    slow_docs = min(docs, args.slow_docs or (20 if args.quick else 100))
    max_length = args.max_length or (2048 if args.quick else 8192)
    shots = (args.shots.split(",") if args.shots else (SHOTS_QUICK if args.quick else SHOTS_FULL))

    from lm_eval.models.huggingface import HFLM

    import manyicl.harness.prefix_scorer  # noqa: F401 - registers harness-prefix
    from manyicl.harness.lm_eval_bridge import write_lm_eval_task
    from manyicl.harness.models import load_tokenizer, resolve_model
    from manyicl.harness.prefix_scorer import PrefixScorerLM
    from manyicl.harness.prompts import build_prompts
    from manyicl.tasks.registry import load_examples, parse_task_list
    from manyicl.train.sequences import Renderer

    began = time.perf_counter()
    print(f"date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"hardware: {hardware_line()}")
    model = resolve_model(args.model)
    tokenizer = load_tokenizer(model)
    renderer = Renderer(tokenizer, "chat")
    data = load_examples(parse_task_list([args.task])[0], args.data_dir)
    if data.task.kind != "multiple_choice":
        raise SystemExit("bench/eval_many_shot.py measures a multiple-choice task (lm-eval's few-shot path needs "
                         "the choices); pass e.g. --task sst2.")
    print(f"model: {model.name} ({model.path}), dtype {args.dtype}; task {args.task}; {docs} documents for (c), "
          f"{slow_docs} for (a)/(b)/(d); max_length {max_length}")

    tmp = Path(tempfile.mkdtemp(prefix="eval-many-shot-"))
    full_dir, slow_dir = tmp / "full", tmp / "slow"
    full_dir.mkdir()
    slow_dir.mkdir()
    settings = {}
    for s in shots:
        if s != "many" and int(s) > 0:
            probe = build_prompts(data, renderer, s, 1234, max_length, 1)
            if probe.docs[0].shots_used < int(s):
                print(f"skipping {s} shots: {probe.docs[0].shots_used} fit in {max_length} tokens")
                continue
        full = build_prompts(data, renderer, s, 1234, max_length, docs)
        slow = build_prompts(data, renderer, s, 1234, max_length, slow_docs)
        settings[s] = {"full": (full, write_lm_eval_task(full, renderer, full_dir)),
                       "slow": (slow, write_lm_eval_task(slow, renderer, slow_dir)),
                       "shots_used": (min(full.shots_used), max(full.shots_used)),
                       "prompt_tokens": sum(d.prompt_tokens for d in full.docs) / len(full.docs)}
    model_args = {"pretrained": model.path, "dtype": args.dtype, "max_length": max_length, "device": "cpu"}
    if model.adapter:
        model_args["peft"] = model.adapter
    import torch

    if torch.cuda.is_available():
        model_args["device"] = "cuda"
    rows: dict[str, dict] = {s: {} for s in settings}
    peaks: dict[str, float] = {}

    # (c) first, so the process's memory peak after it is its own
    scorer = PrefixScorerLM(**model_args)
    for s, st in settings.items():
        before = dict(scorer.stats)
        seconds, result = _timed(scorer, [st["full"][1]], full_dir)
        rows[s]["c"] = (len(st["full"][0].docs), seconds)
        rows[s]["c_acc"] = result["results"][st["full"][1]]["acc,none"]
        rows[s]["c_samples"] = result["samples"][st["full"][1]]
        rows[s]["c_positions"] = {k: scorer.stats[k] - before.get(k, 0) for k in scorer.stats}
        rows[s]["prefix_s"], rows[s]["prefix_tokens"] = _prefix_forward_seconds(scorer, st["full"][0])
    peaks["c"] = _peak_rss_gib()
    kv_per_token = manyicl.harness.prefix_scorer.kv_bytes_per_token(scorer.model.config, scorer._param_dtype)
    del scorer

    # (b) today's path: the same fixed-demonstration prompts through lm-eval hf
    hf = HFLM(**model_args, batch_size=4)
    for s, st in settings.items():
        seconds, result = _timed(hf, [st["slow"][1]], slow_dir)
        rows[s]["b"] = (len(st["slow"][0].docs), seconds)
        rows[s]["b_acc"] = result["results"][st["slow"][1]]["acc,none"]
        rows[s]["b_samples"] = result["samples"][st["slow"][1]]
    peaks["b"] = _peak_rss_gib()

    # (a) lm-eval's default few-shot path: its sampler draws k demonstrations per document
    plain_dir = tmp / "plain"
    plain = _plain_lm_eval_task(data, renderer, plain_dir, slow_docs)
    for s in settings:
        k = 0 if s == "0" else (settings[s]["shots_used"][1] if s == "many" else int(s))
        seconds, _ = _timed(hf, [plain], plain_dir, num_fewshot=k)
        rows[s]["a"] = (slow_docs, seconds)
        rows[s]["a_k"] = k
    peaks["a"] = _peak_rss_gib()
    del hf

    # (d) the vLLM server, started once (its start-up is reported, not counted per setting)
    vllm_note = "skipped (--no-vllm)"
    if not args.no_vllm:
        from manyicl.harness.serve import api_key_env, lm_eval_model_args, vllm_available, vllm_server

        if not vllm_available():
            vllm_note = "skipped (vLLM not installed)"
        else:
            started = time.perf_counter()
            with vllm_server(model.path, dtype=args.dtype, max_model_len=max_length + 1,
                             log_path=tmp / "vllm.log") as handle:
                vllm_note = f"server start {time.perf_counter() - started:.0f} s (not counted below)"
                kind, largs = lm_eval_model_args(handle, model.path, max_length, num_concurrent=4)
                with api_key_env(handle.api_key):
                    for s, st in settings.items():
                        seconds, _ = _timed(kind, [st["slow"][1]], slow_dir, model_args=largs)
                        rows[s]["d"] = (len(st["slow"][0].docs), seconds)

    # the limit: zero-shot time of the same documents plus one forward of each setting's shared prefix
    zero = rows.get("0", {}).get("c")
    print()
    print(f"{'shots':>5} {'used':>9} {'tokens':>6} | {'(a) lm-eval':>11} {'(b) hf':>8} {'(c) prefix':>10} "
          f"{'(d) vllm':>8} {'limit':>8} | {'c/a':>6} {'c/b':>6} {'c/d':>6} {'c/limit':>7}   documents/s")
    figures = {}
    for s, row in rows.items():
        dps = {p: row[p][0] / row[p][1] for p in ("a", "b", "c", "d") if p in row}
        limit = None
        if zero:
            limit_seconds = zero[1] * docs / zero[0] + row["prefix_s"]
            limit = docs / limit_seconds
        used = settings[s]["shots_used"]
        ratio = lambda x, y: f"{x / y:6.1f}" if x and y else f"{'-':>6}"  # noqa: E731
        print(f"{s:>5} {f'{used[0]}-{used[1]}':>9} {settings[s]['prompt_tokens']:>6.0f} | "
              f"{dps.get('a', 0):>11.2f} {dps.get('b', 0):>8.2f} {dps['c']:>10.2f} "
              f"{dps.get('d', float('nan')):>8.2f} {limit or float('nan'):>8.2f} | "
              f"{ratio(dps['c'], dps.get('a'))} {ratio(dps['c'], dps.get('b'))} {ratio(dps['c'], dps.get('d'))} "
              f"{ratio(limit, dps['c']):>7}")
        figures[s] = {"shots_used": used, "prompt_tokens": settings[s]["prompt_tokens"], "docs_per_s": dps,
                      "limit_docs_per_s": limit, "a_num_fewshot": row["a_k"],
                      "prefix_tokens": row["prefix_tokens"], "prefix_forward_s": row["prefix_s"],
                      "c_positions": row["c_positions"]}
    print("c/limit is (c)'s time over the limit's time (goal <= 1.5 at `many`); c/a goal >= 10 at >= 32 shots.")
    print(f"(d) vLLM: {vllm_note}")
    print(f"peak resident memory (GiB) after (c): {peaks['c']:.2f}, after (b): {peaks['b']:.2f}, "
          f"after (a): {peaks['a']:.2f}")
    longest = max(row["prefix_tokens"] for row in rows.values())
    print(f"(c) holds one prefix cache at a time: {longest} tokens x {kv_per_token / 2**10:.0f} KiB = "
          f"{longest * kv_per_token / 2**20:.0f} MiB of keys and values")

    # (b) and (c) score the same prompts: their answers on the shared documents
    worst, agree, compared = 0.0, 0, 0
    for row in rows.values():
        c_by_doc = {smp["doc_id"]: smp for smp in row["c_samples"]}
        for smp in row["b_samples"]:
            other = c_by_doc[smp["doc_id"]]
            for (b_resp,), (c_resp,) in zip(smp["resps"], other["resps"], strict=True):
                worst = max(worst, abs(float(b_resp[0]) - float(c_resp[0])))
            agree += smp["acc"] == other["acc"]
            compared += 1
    print(f"(b) vs (c) on the same {compared} document-settings: same correctness on {agree}; largest per-choice "
          f"log-likelihood difference {worst:.3g} ({args.dtype}; the exactness test compares in float32)")
    print(f"total wall time {time.perf_counter() - began:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "peaks_gib": peaks, "vllm": vllm_note,
                                               "command": sys.argv, "worst_ll_diff": worst}, indent=1, default=str))


if __name__ == "__main__":
    main()
