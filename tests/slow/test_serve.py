"""The vLLM server lifecycle: exact log-likelihoods through the OpenAI API and lm-eval, the API key, and that no
server process outlives its `with` block, an exception, SIGTERM or SIGKILL of the harness."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.serve import (
    api_key_env,
    last_meaningful_line,
    lm_eval_model_args,
    post_json,
    stop_server,
    vllm_available,
    vllm_runs_on_cpu,
    vllm_server,
)
from tests.fixtures import build_tiny_model
from tests.helpers import alive as _alive

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

REPO = Path(__file__).resolve().parents[2]
# Generous: every start costs 25-45 s on two shared cores, more when other jobs run.
STARTUP_TIMEOUT = 600
SERVER_KWARGS = {"dtype": "float32", "max_model_len": 512, "fast_start": True, "startup_timeout": STARTUP_TIMEOUT}
PROMPT_TEXT = "Question: what is the movie about? Answer: the plot has a good actor and a bad film"


def _tree(pid: int) -> list[int]:
    import psutil

    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


@pytest.fixture(scope="module")
def servable_model(tmp_path_factory) -> Path:
    # hidden 64 with 2 heads gives head_dim 32: the CPU attention kernels take 32, 64, 80, ... but not the
    # default tiny model's 16.
    return build_tiny_model(tmp_path_factory.mktemp("tiny-vllm"), hidden=64)


@pytest.fixture(scope="module")
def lora_adapter(servable_model, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(servable_model, dtype=torch.float32)
    # Random B as well as A, so the adapter changes the outputs.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    target = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(model, config).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def vllm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-cache")


class RunningServer:
    """The module's shared server; `close()` leaves its `with` block early so a test can watch the shutdown."""

    def __init__(self, stack: ExitStack, handle, started_s: float):
        self.stack, self.handle, self.started_s = stack, handle, started_s
        self.pids = _tree(handle.process.pid)

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def server(servable_model, lora_adapter, vllm_cache, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        stack = ExitStack()
        log = tmp_path_factory.mktemp("logs") / "server.log"
        started = time.monotonic()
        handle = stack.enter_context(vllm_server(
            str(servable_model), served_name="tiny", adapters={"tiny-lora": str(lora_adapter)},
            log_path=log, cache_root=vllm_cache, **SERVER_KWARGS))
        running = RunningServer(stack, handle, time.monotonic() - started)
        print(f"\nvLLM server ready in {running.started_s:.1f} s")
        yield running
        stack.close()


def _reference_logprobs(model_dir: Path, ids: list[int], adapter: Path | None = None) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 from a transformers fp32 forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _prompt_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.bos_token_id, *tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("served", ["tiny", "tiny-lora"])
def test_prompt_logprobs_match_transformers(server, servable_model, lora_adapter, served):
    ids = _prompt_ids(servable_model)
    status, body = post_json(f"{server.handle.base_url}/completions",
                             {"model": served, "prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1,
                              "temperature": 0}, server.handle.api_key)
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(ids)  # token ids go in as they are: no BOS added
    got = body["choices"][0]["logprobs"]["token_logprobs"][: len(ids)]
    assert got[0] is None
    expected = _reference_logprobs(servable_model, ids, lora_adapter if served == "tiny-lora" else None)
    assert max(abs(g - e) for g, e in zip(got[1:], expected, strict=True)) < 1e-3
    if served == "tiny-lora":  # the adapter is really applied
        base = _reference_logprobs(servable_model, ids)
        assert max(abs(g - b) for g, b in zip(got[1:], base, strict=True)) > 1e-2


def test_requests_need_the_api_key(server):
    handle = server.handle
    payload = {"model": "tiny", "prompt": [1, 5, 6], "max_tokens": 1}
    assert post_json(f"{handle.base_url}/completions", payload, "wrong-key")[0] == 401
    assert post_json(f"{handle.base_url}/completions", payload, handle.api_key)[0] == 200
    import urllib.request

    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            urllib.request.Request(f"{handle.base_url}/models",
                                   headers={"Authorization": f"Bearer {handle.api_key}"}), timeout=30) as response:
        served = {model["id"] for model in json.loads(response.read())["data"]}
    assert served == {"tiny", "tiny-lora"}
    import psutil

    assert handle.api_key not in " ".join(psutil.Process(handle.process.pid).cmdline())  # `ps` shows argv
    assert handle.api_key not in handle.log_path.read_text(errors="replace")


def test_lm_eval_local_completions_is_exact(server, servable_model):
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, args = lm_eval_model_args(server.handle, str(servable_model), max_length=512)
    assert name == "local-completions" and server.handle.api_key not in json.dumps(args)
    context, continuation = "Question: what is the movie about? Answer:", " the plot"
    with api_key_env(server.handle.api_key):
        lm = get_model(name)(**args)
        (loglik, _greedy), = lm.loglikelihood(
            [Instance("loglikelihood", {}, (context, continuation), 0)], disable_tqdm=True)
        generated, = lm.generate_until(
            [Instance("generate_until", {}, (context, {"until": ["\n"], "max_gen_toks": 8}), 0)],
            disable_tqdm=True)
    assert os.environ.get("OPENAI_API_KEY") != server.handle.api_key  # restored

    tokenizer = AutoTokenizer.from_pretrained(servable_model)
    model = AutoModelForCausalLM.from_pretrained(servable_model, dtype=torch.float32).eval()
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx_len = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
        expected = sum(logprobs[i - 1, whole[i]].item() for i in range(ctx_len, len(whole)))
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        out = model.generate(torch.tensor([ctx_ids]), max_new_tokens=8, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    reference_text = tokenizer.decode(out[0, len(ctx_ids):], skip_special_tokens=True).split("\n")[0]
    assert abs(loglik - expected) < 1e-3
    assert generated == reference_text


def test_leaving_the_block_stops_the_whole_process_tree(server):
    # Runs last among the shared-server tests (file order): it closes the shared server.
    pids = _tree(server.handle.process.pid)
    assert len(pids) >= 2, "expected the API server and its engine-core child"
    started = time.monotonic()
    server.close()
    stop_s = time.monotonic() - started
    print(f"\nstopped in {stop_s:.1f} s")
    assert _alive(pids + server.pids) == []
    assert stop_s < 30


def test_an_exception_inside_the_block_stops_the_server(servable_model, vllm_cache, tmp_path):
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        with vllm_server(str(servable_model), log_path=tmp_path / "server.log", cache_root=vllm_cache,
                         **SERVER_KWARGS) as handle:
            pids = _tree(handle.process.pid)
            raise RuntimeError("boom")
    assert len(pids) >= 2
    assert _alive(pids) == []


SERVE_FOREVER_SCRIPT = """
import sys
from pathlib import Path
from manyicl.harness.serve import serve_forever

serve_forever(sys.argv[1], None, "float32", 512, Path(sys.argv[2]), served_name="tiny", fast_start=True,
              cache_root=Path(sys.argv[3]), startup_timeout=600)
print("returned", flush=True)
"""

WITH_BLOCK_SCRIPT = """
import sys, time
from pathlib import Path
from manyicl.harness.serve import vllm_server

with vllm_server(sys.argv[1], dtype="float32", max_model_len=512, fast_start=True, startup_timeout=600,
                 log_path=Path(sys.argv[2]), cache_root=Path(sys.argv[3])):
    print("Press Ctrl-C", flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm-serve-forever", "sigkill"])
def test_a_stopped_or_killed_harness_leaves_no_server(servable_model, vllm_cache, tmp_path, sig):
    """SIGTERM: `serve_forever` (what `harness serve` runs) turns it into a clean stop and returns. SIGKILL runs no
    Python at all: the kernel's parent-death signal makes the server stop itself."""
    import psutil

    script = tmp_path / "harness_proc.py"
    script.write_text(SERVE_FOREVER_SCRIPT if sig == signal.SIGTERM else WITH_BLOCK_SCRIPT)
    log = tmp_path / "server.log"
    harness = subprocess.Popen([sys.executable, str(script), str(servable_model), str(log), str(vllm_cache)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, COLUMNS="200"))
    try:
        printed = []
        for line in harness.stdout:
            printed.append(line)
            if "Press Ctrl-C" in line:
                break
        output = "".join(printed)
        assert "Press Ctrl-C" in output, f"the harness process died before the server was ready: {output[-2000:]}"
        children = psutil.Process(harness.pid).children()
        assert len(children) == 1
        pids = _tree(children[0].pid)
        assert len(pids) >= 2
        if sig == signal.SIGTERM:  # what serve_forever printed is enough to use the server
            url, key = re.search(r"curl (\S+) -H 'Authorization: Bearer (\w+)'", output).groups()
            assert post_json(url, {"model": "tiny", "prompt": [1, 5], "max_tokens": 1}, key)[0] == 200
        harness.send_signal(sig)
        rest, _ = harness.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert harness.returncode == 0 and "Server stopped." in rest and "returned" in rest
        else:
            assert harness.returncode == -signal.SIGKILL
        assert _wait_gone(pids, timeout=60) == []
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()


@pytest.mark.skipif(not vllm_runs_on_cpu(), reason="the head-size limit is the CPU attention backend's")
def test_a_model_the_engine_cannot_run_fails_at_startup(vllm_cache, tmp_path):
    # head_dim 16: the server starts and answers /health, then its engine dies on the first batch.
    model = build_tiny_model(tmp_path / "head16", hidden=32)
    log = tmp_path / "server.log"
    with pytest.raises(HarnessError, match="head_dim=16") as err:
        with vllm_server(str(model), log_path=log, cache_root=vllm_cache, **SERVER_KWARGS):
            pass
    assert str(log) in str(err.value)


def test_a_missing_model_path_fails_before_starting(tmp_path):
    started = time.monotonic()
    with pytest.raises(HarnessError, match="does not exist"):
        with vllm_server(str(tmp_path / "no-such-model"), **SERVER_KWARGS):
            pass
    assert time.monotonic() - started < 1


def test_a_folder_without_a_model_fails_quickly_naming_the_log(vllm_cache, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    log = tmp_path / "server.log"
    started = time.monotonic()
    with pytest.raises(HarnessError, match="exited with code") as err:
        with vllm_server(str(empty), log_path=log, cache_root=vllm_cache, **SERVER_KWARGS):
            pass
    assert str(log) in str(err.value)
    assert "Invalid repository ID or local directory" in str(err.value)
    assert time.monotonic() - started < 180


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    # Stands in for a hung server: a process group whose leader and child both ignore SIGTERM.
    process = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 300 & wait"], start_new_session=True)
    time.sleep(0.5)
    pids = _tree(process.pid)
    assert len(pids) == 2
    started = time.monotonic()
    stop_server(process, grace=1)
    assert _alive(pids) == []
    assert 1 <= time.monotonic() - started < 10


def test_the_log_line_shown_is_the_root_cause(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(
        "(EngineCore pid=4563) ERROR 11-28 17:51:56 [core.py:1512] RuntimeError: Unsupported CPU attention "
        "configuration: head_dim=16 isa=2 kv_cache_idx=0\n"
        "(APIServer pid=4403) ERROR 11-28 17:51:56 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
        "EngineCore encountered an issue. See stack trace (above) for the root cause.\n"
        "INFO:     Application shutdown complete.\n")
    assert last_meaningful_line(log) == ("RuntimeError: Unsupported CPU attention configuration: head_dim=16 "
                                         "isa=2 kv_cache_idx=0")
    log.write_text("Traceback (most recent call last):\n  File x\n"
                   "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                   "  Value error, Invalid repository ID or local directory specified: 'x'.\n"
                   "Please verify the following requirements:\n")
    assert last_meaningful_line(log).endswith("for ModelConfig: Value error, Invalid repository ID or local "
                                              "directory specified: 'x'.")
    log.write_text("INFO starting\nKilled\n")
    assert last_meaningful_line(log) == "Killed"
