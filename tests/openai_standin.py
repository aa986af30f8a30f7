"""A minimal OpenAI-compatible completions server over transformers, answering the way vLLM's does for what
lm-eval's `local-completions` model asks: a test stand-in for a server a user runs (`harness evaluate
--server-url`), quick to start on a CPU where vLLM takes half a minute.

    python -m tests.openai_standin --model FOLDER [--port 0] [--served-model-name NAME] [--api-key KEY]

It prints `READY http://127.0.0.1:PORT/v1` on stdout once it answers. Served: `GET /v1/models`, `GET /health`,
and `POST /v1/completions` with a prompt given as text, token ids or a list of either; `echo` with `logprobs`
returns every prompt token's log-probability (the first is null, as in vLLM) and `max_tokens` greedy tokens
(0 allowed with echo); `stop` strings cut the text before them. Scoring is float32, one prompt at a time, so the
numbers equal lm-eval's `hf` model in float32 up to rounding. There is no `/metrics` (404), as on servers that
do not export Prometheus counters. Only greedy decoding: `temperature` above 0 is refused rather than ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
READY = "READY "


class RequestError(Exception):
    """A request the server refuses, answered as vLLM answers it: an `error` object and this HTTP status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


class Engine:
    """The model and tokenizer; one request at a time (the handler threads share it under a lock)."""

    def __init__(self, model_path: str, max_model_len: int | None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        config = self.model.config
        self.max_model_len = max_model_len or getattr(config, "max_position_embeddings", 2048)
        eos = self.model.generation_config.eos_token_id or config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.lock = threading.Lock()

    def prompts(self, prompt: Any) -> list[list[int]]:
        """The OpenAI `prompt` field as token-id lists: text is tokenized as vLLM does (special tokens added)."""
        def ids(item: Any) -> list[int]:
            if isinstance(item, str):
                return self.tokenizer(item)["input_ids"]
            if isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
                if max(item) >= self.model.config.vocab_size or min(item) < 0:
                    raise RequestError("Token id out of vocabulary in `prompt`.")
                return list(item)
            raise RequestError("`prompt` must be a text, a list of token ids, or a list of either.")

        if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
            return [ids(p) for p in prompt]
        return [ids(prompt)]

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def top(self, logprobs_row, chosen: int, k: int) -> dict[str, float]:
        """The chosen token and the k likeliest, by text (vLLM's `top_logprobs` entry for one position)."""
        entry = {self.token_text(chosen): float(logprobs_row[chosen])}
        if k > 0:
            values, indices = self.torch.topk(logprobs_row, k)
            for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                entry.setdefault(self.token_text(index), float(value))
        return entry

    def complete(self, ids: list[int], max_tokens: int, echo: bool, logprobs: int | None,
                 stop: list[str]) -> dict[str, Any]:
        """One choice: greedy continuation of `ids`, with the prompt's log-probabilities when `echo`."""
        torch = self.torch
        if len(ids) + max_tokens > self.max_model_len:
            raise RequestError(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} "
                               "in the completion). Please reduce the length of the messages or completion.")
        if not ids:
            raise RequestError("The prompt is empty.")
        tokens: list[int] = []
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        with self.lock, torch.no_grad():
            out = self.model(torch.tensor([ids]), use_cache=True)
            rows = torch.log_softmax(out.logits[0].float(), dim=-1)
            if echo:
                tokens += ids
                token_logprobs.append(None)
                top_logprobs.append(None)
                for pos in range(1, len(ids)):
                    token_logprobs.append(float(rows[pos - 1, ids[pos]]))
                    top_logprobs.append(self.top(rows[pos - 1], ids[pos], logprobs or 0))
            generated: list[int] = []
            past, last = out.past_key_values, rows[-1]
            finish, text = "length", ""
            while len(generated) < max_tokens:
                token = int(torch.argmax(last))
                if token in self.eos_ids:
                    finish = "stop"
                    break
                generated.append(token)
                tokens.append(token)
                token_logprobs.append(float(last[token]))
                top_logprobs.append(self.top(last, token, logprobs or 0))
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                cut = min((text.find(s) for s in stop if s and s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    break
                if len(generated) == max_tokens:
                    break
                out = self.model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
                past, last = out.past_key_values, torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        prompt_text = self.tokenizer.decode(ids) if echo else ""
        choice: dict[str, Any] = {"text": prompt_text + text, "finish_reason": finish, "stop_reason": None,
                                  "logprobs": None}
        if logprobs is not None:
            texts = [self.token_text(t) for t in tokens]
            offsets, at = [], 0
            for piece in texts:
                offsets.append(at)
                at += len(piece)
            choice["logprobs"] = {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": texts,
                                  "top_logprobs": top_logprobs}
        return {"choice": choice, "prompt_tokens": len(ids), "completion_tokens": len(generated)}


def _int_field(body: dict, key: str, default: int | None, low: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise RequestError(f"`{key}` must be a whole number of at least {low}, got {value!r}.")
    return value


@dataclass
class Service:
    engine: Engine
    served_name: str
    api_key: str | None

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.served_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "openai-standin", "root": self.served_name,
                                            "max_model_len": self.engine.max_model_len}]}

    def completions(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.")
        if body.get("model") != self.served_name:
            raise RequestError(f"The model `{body.get('model')}` does not exist.", HTTPStatus.NOT_FOUND)
        if "prompt" not in body:
            raise RequestError("`prompt` is required.")
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, int | float) or temperature > 0:
            raise RequestError("This stand-in decodes greedily only; send `temperature: 0`.")
        echo = bool(body.get("echo", False))
        max_tokens = _int_field(body, "max_tokens", 16, 0 if echo else 1)
        logprobs = _int_field(body, "logprobs", None, 0)
        if int(body.get("n", 1)) != 1:
            raise RequestError("Only `n: 1` is served.")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("`stop` must be a text or a list of texts.")
        prompts = self.engine.prompts(body["prompt"])
        done = [self.engine.complete(ids, max_tokens, echo, logprobs, stop) for ids in prompts]
        prompt_tokens = sum(d["prompt_tokens"] for d in done)
        completion_tokens = sum(d["completion_tokens"] for d in done)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.served_name, "choices": [{"index": i, **d["choice"]} for i, d in enumerate(done)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp's pooled connections expect

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request would drown the test's output

        def _send(self, status: HTTPStatus, payload: dict | None = None) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, err: RequestError) -> None:
            self._send(err.status, {"error": {"message": str(err), "type": err.status.phrase.replace(" ", "") + "Error",
                                              "param": None, "code": int(err.status)}})

        def _authorized(self) -> bool:
            if service.api_key is None or self.headers.get("Authorization") == f"Bearer {service.api_key}":
                return True
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "Unauthorized"})
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._send(HTTPStatus.OK)
            elif self.path == "/v1/models":
                if self._authorized():
                    self._send(HTTPStatus.OK, service.models())
            else:
                self._send(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/completions":
                self._send(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})
                return
            if not self._authorized():
                return
            try:
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError as err:
                    raise RequestError(f"The request body is not JSON: {err}.") from None
                self._send(HTTPStatus.OK, service.completions(payload))
            except RequestError as err:
                self._error(err)
            except Exception as err:  # noqa: BLE001 - a server answers 500, it does not drop the connection
                self._error(RequestError(f"{type(err).__name__}: {err}", HTTPStatus.INTERNAL_SERVER_ERROR))

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True, help="model folder (transformers format)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port, chosen by the system")
    parser.add_argument("--served-model-name", help="the name requests use (default: --model as given, as vLLM)")
    parser.add_argument("--api-key", default=os.environ.get("STANDIN_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (default: $STANDIN_API_KEY, else none)")
    parser.add_argument("--max-model-len", type=int, help="default: the model's max_position_embeddings")
    args = parser.parse_args(argv)
    service = Service(Engine(args.model, args.max_model_len), args.served_model_name or args.model, args.api_key)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(service))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"{READY}http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextmanager
def running_standin(model: Path | str, *args: str, timeout: float = 120) -> Iterator[str]:
    """Start the stand-in as a child process on a free port; yield its base URL (…/v1) once it answers; stop it.
    `args` are further command-line flags (--served-model-name, --api-key)."""
    cmd = [sys.executable, "-m", "tests.openai_standin", "--model", str(model), "--port", "0", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # stderr to a file, not a pipe: a pipe nobody reads blocks the child once it fills
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            yield _await_ready(process, log, timeout)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _await_ready(process: subprocess.Popen, log: IO[str], timeout: float) -> str:
    """The URL from the READY line; the child's stderr in the error if it exits or stays silent."""
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith(READY):
                found.append(line[len(READY):].strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if found:
        return found[0]
    process.kill()
    process.wait()
    log.seek(0)
    raise RuntimeError(f"the OpenAI stand-in did not start (exit {process.returncode}): {log.read()[-2000:]}")


if __name__ == "__main__":
    main()
