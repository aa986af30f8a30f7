"""Which served model `--server-url` scores, against a small in-process HTTP server that lists models as vLLM's
GET /v1/models does: the one named, else the model's own path or name, else the only one served (never guessed
for a LoRA adapter); and how --backend and a malformed URL combine with it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.lm_eval_bridge import choose_backend, connect_external_server
from manyicl.harness.models import ModelUnderTest, ResolvedModel
from manyicl.harness.settings import EvalConfig

LENGTHS: dict[str, int] = {"short": 128}  # the context the server reports for a name (vLLM's max_model_len)


@pytest.fixture
def listing() -> Iterator[tuple[str, list[str]]]:
    """(base URL, the names it lists): change the list in place to change what the server serves."""
    names: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002
            pass

        def do_GET(self):  # noqa: N802
            ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer k"
            data = json.dumps({"object": "list", "data": [{"id": n, "object": "model", "max_model_len": LENGTHS.get(n)}
                                                     for n in names]}
                              if ok else {"error": "Unauthorized"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", names
    finally:
        server.shutdown()
        server.server_close()


def _mut(path: str = "/models/base", adapter: str | None = None, name: str = "base") -> ModelUnderTest:
    return ModelUnderTest(model=ResolvedModel(path=path, adapter=adapter, name=name), method="base",
                          base_model=path, format=None, max_seq_len=None)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")


def test_the_named_served_model_is_used_and_checked(listing):
    url, names = listing
    names += ["base", "arm-a"]
    assert connect_external_server(EvalConfig(server_url=url + "/", served_model="arm-a"), _mut()).model_name == "arm-a"
    with pytest.raises(HarnessError, match=r"serves base, arm-a, not arm-b; pass one of those as --served-model"):
        connect_external_server(EvalConfig(server_url=url, served_model="arm-b"), _mut())


def test_without_a_name_the_models_path_or_name_then_the_only_model(listing):
    url, names = listing
    names += ["/models/base", "other"]
    assert connect_external_server(EvalConfig(server_url=url), _mut()).model_name == "/models/base"
    names[:] = ["run-7", "other"]
    assert connect_external_server(EvalConfig(server_url=url), _mut(name="run-7")).model_name == "run-7"
    names[:] = ["whatever-vllm-calls-it"]
    handle = connect_external_server(EvalConfig(server_url=url), _mut())
    assert (handle.model_name, handle.base_url) == ("whatever-vllm-calls-it", url)
    names[:] = ["a", "b"]
    with pytest.raises(HarnessError, match=r"serves a, b; say which is base with --served-model"):
        connect_external_server(EvalConfig(server_url=url), _mut())


def test_an_adapter_is_not_guessed_to_be_the_only_served_model(listing):
    """The base model alone would score without error, and its numbers would be labelled as the adapter's."""
    url, names = listing
    names += ["/models/base"]
    adapter = _mut(adapter="/runs/arm/final", name="arm")
    with pytest.raises(HarnessError, match=r"serves /models/base; say which is arm with --served-model"):
        connect_external_server(EvalConfig(server_url=url), adapter)
    names.append("arm")
    assert connect_external_server(EvalConfig(server_url=url), adapter).model_name == "arm"


def test_a_wrong_key_is_named(listing, monkeypatch):
    url, names = listing
    names.append("m")
    monkeypatch.setenv("OPENAI_API_KEY", "not-k")
    with pytest.raises(HarnessError, match=rf"The server at {url} refused the API key \(HTTP 401\)"):
        connect_external_server(EvalConfig(server_url=url), _mut())


@pytest.mark.parametrize("backend", ["hf", "prefix"])
def test_an_in_process_backend_with_a_server_is_a_conflict(backend):
    with pytest.raises(HarnessError, match=rf"--backend {backend} scores in this process and --server-url"):
        choose_backend(EvalConfig(backend=backend, server_url="http://h:8000/v1"), {"multiple_choice"})


@pytest.mark.parametrize("backend", ["auto", "vllm"])
def test_auto_and_vllm_score_on_the_server(backend):
    assert choose_backend(EvalConfig(backend=backend, server_url="http://h:8000/v1"), {"generate_until"}) == (
        "vllm", "--server-url names a running server")


@pytest.mark.parametrize("url", ["localhost:8000", "127.0.0.1:8000/v1", "ftp://h/v1", "http:///v1", "http://h/v1?x=1"])
def test_a_malformed_url_is_refused_before_connecting(url):
    with pytest.raises(HarnessError, match=r"is not an http\(s\) URL; write it as http://HOST:PORT/v1"):
        choose_backend(EvalConfig(server_url=url), {"multiple_choice"})


def test_several_arms_refuse_an_in_process_backend_before_setting_their_server_url():
    """Each arm is scored through --server-url on the arms' own server, which an in-process backend cannot use."""
    from manyicl.harness.shared_server import evaluate_arms

    with pytest.raises(HarnessError, match=r"needs the vLLM backend .*with --backend prefix evaluate each model"):
        evaluate_arms(EvalConfig(model="a,b", backend="prefix"))


def test_a_server_context_shorter_than_the_prompts_is_refused(listing):
    url, names = listing
    names += ["short", "unsaid"]
    with pytest.raises(HarnessError, match=r"serves short with a context of 128 tokens; --max-length 128 needs 129"):
        connect_external_server(EvalConfig(server_url=url, served_model="short"), _mut(), max_length=128)
    assert connect_external_server(EvalConfig(server_url=url, served_model="short"), _mut(), 127).model_name == "short"
    # a server that does not report its context is taken at its word; lm-eval's requests then say if it is short
    assert connect_external_server(EvalConfig(server_url=url, served_model="unsaid"), _mut(), 10**6).model_name == "unsaid"
