"""Remote and GPU back-ends without the real services: a local fake OpenAI-compatible server, and a
fake ``vllm`` module standing in for the CUDA-only engine."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from icdcoder.coders.generative.backends import Sampling
from icdcoder.coders.generative.remote import OpenAIBackend
from icdcoder.errors import IcdcoderError

NOTE = "Patient Jane Roe, 71, admitted 2031-02-03 for decompensated heart failure; hypertension, type 2 diabetes."


def chat(note: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You assign ICD-10 codes."}, {"role": "user", "content": note}]


class FakeServer:
    """Records every request; ``plan`` (a list of callables, used in order, the last one repeating)
    turns a request into (status, headers, body)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.plan = [self.ok]
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with owner.lock:
                    owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    step = owner.plan[min(len(owner.requests), len(owner.plan)) - 1]
                status, headers, payload = step(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @staticmethod
    def ok(body):
        """One choice per requested n, in reverse index order; the text names the note and the index."""
        note = body["messages"][-1]["content"]
        choices = [{"index": i, "message": {"role": "assistant", "content": f"{note[:7]}#{i}"}, "finish_reason": "stop"}
                   for i in range(body.get("n", 1))]
        return 200, {}, {"id": "x", "object": "chat.completion", "choices": choices[::-1]}


@pytest.fixture
def server():
    srv = FakeServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_request_fields_and_prompt_order(server):
    slow_first = []

    def step(body):
        if body["messages"][-1]["content"].startswith("note-0") and not slow_first:
            slow_first.append(1)
            time.sleep(0.2)  # the first prompt finishes last; results must still come back in order
        return FakeServer.ok(body)

    server.plan = [step]
    backend = OpenAIBackend(server.url + "/", "qwen-7b", api_key="sk-test", concurrency=3)
    notes = [f"note-{i} text" for i in range(5)]
    out = backend.generate([chat(n) for n in notes], Sampling(max_new_tokens=32, temperature=0.0, seed=7))
    assert out == [[f"note-{i} #0"] for i in range(5)]
    assert len(server.requests) == 5
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "qwen-7b" and body["max_tokens"] == 32 and body["n"] == 1
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0 and body["seed"] == 7
    assert body["messages"][0] == {"role": "system", "content": "You assign ICD-10 codes."}
    assert "sk-test" not in repr(backend)


def test_n_completions_ordered_by_index_and_no_seed_when_unset(server):
    backend = OpenAIBackend(server.url, "m", api_key="k", extra_body={"top_k": 20})
    out = backend.generate([chat("first note"), chat("second note")], Sampling(temperature=0.8, top_p=0.9, n=3))
    assert out == [[f"first n#{i}" for i in range(3)], [f"second #{i}" for i in range(3)]]
    body = server.requests[0]["body"]
    assert body["n"] == 3 and body["top_p"] == 0.9 and "seed" not in body and body["top_k"] == 20


def test_fewer_choices_than_asked_is_an_error(server):
    server.plan = [lambda body: FakeServer.ok({**body, "n": 1})]
    backend = OpenAIBackend(server.url, "m")
    with pytest.raises(IcdcoderError, match=r"returned 1 completion.*n=2"):
        backend.generate([chat(NOTE)], Sampling(temperature=1.0, n=2))


def test_retries_after_503_and_429_then_succeeds(server):
    server.plan = [lambda body: (503, {"Retry-After": "0"}, {"error": {"message": "loading model"}}),
                   lambda body: (429, {}, {"error": {"message": "slow down"}}),
                   FakeServer.ok]
    backend = OpenAIBackend(server.url, "m", max_retries=2, backoff=0.01)
    assert backend.generate([chat("retry me")], Sampling()) == [["retry m#0"]]
    assert len(server.requests) == 3


def test_gives_up_after_max_retries(server):
    server.plan = [lambda body: (500, {}, b"internal trouble")]
    backend = OpenAIBackend(server.url, "m", max_retries=1, backoff=0.0)
    with pytest.raises(IcdcoderError, match=r"HTTP 500: internal trouble \(gave up after 2 attempts\)"):
        backend.generate([chat(NOTE)], Sampling())
    assert len(server.requests) == 2


def test_client_error_names_status_and_server_message_but_not_the_note(server):
    # A server that echoes the request in its error (pydantic-style validation errors do).
    def echo(body):
        note = body["messages"][-1]["content"]
        return 400, {}, {"error": {"message": f"bad request: max_tokens too large for input {note!r}",
                                   "type": "BadRequestError"}}

    server.plan = [echo]
    backend = OpenAIBackend(server.url, "m", max_retries=3, backoff=0.0)
    with pytest.raises(IcdcoderError) as info:
        backend.generate([chat(NOTE)], Sampling())
    message = str(info.value)
    assert "HTTP 400" in message and server.url + "/chat/completions" in message
    assert "max_tokens too large" in message and "[prompt text removed]" in message
    for start in range(0, len(NOTE) - 16, 4):
        assert NOTE[start:start + 16] not in message
    assert len(server.requests) == 1  # a 4xx other than 429 is not retried


def test_echo_in_a_raw_json_body_is_removed_too(server):
    server.plan = [lambda body: (422, {}, json.dumps({"detail": [{"input": body["messages"]}]}).encode())]
    backend = OpenAIBackend(server.url, "m")
    with pytest.raises(IcdcoderError, match="HTTP 422") as info:
        backend.generate([chat(NOTE + "\nline two of the note, with \"quotes\"")], Sampling())
    assert "Jane Roe" not in str(info.value) and "line two" not in str(info.value)


def test_timeout_is_retried_then_reported(server):
    def slow(body):
        time.sleep(0.6)
        return FakeServer.ok(body)

    server.plan = [slow]
    backend = OpenAIBackend(server.url, "m", timeout=0.15, max_retries=1, backoff=0.0)
    started = time.monotonic()
    with pytest.raises(IcdcoderError, match=r"did not answer within 0.15 s \(gave up after 2 attempts\)") as info:
        backend.generate([chat(NOTE)], Sampling())
    assert time.monotonic() - started < 1.5
    assert "Jane" not in str(info.value)


def test_connection_refused():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=0)
    with pytest.raises(IcdcoderError, match="cannot reach"):
        backend.generate([chat(NOTE)], Sampling())


def test_api_key_from_environment_or_none(server, monkeypatch):
    monkeypatch.setenv("ICD_TEST_KEY", "env-key")
    OpenAIBackend(server.url, "m", api_key_env="ICD_TEST_KEY").generate([chat("a note")], Sampling())
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIBackend(server.url, "m").generate([chat("a note")], Sampling())
    assert server.requests[0]["headers"]["Authorization"] == "Bearer env-key"
    assert "Authorization" not in server.requests[1]["headers"]


def test_non_json_reply_and_bad_url(server):
    server.plan = [lambda body: (200, {}, b"<html>proxy login</html>")]
    with pytest.raises(IcdcoderError, match="not JSON"):
        OpenAIBackend(server.url, "m").generate([chat(NOTE)], Sampling())
    with pytest.raises(IcdcoderError, match="http"):
        OpenAIBackend("localhost:8000/v1", "m")
    assert OpenAIBackend(server.url, "m").generate([], Sampling()) == []


# -- vLLM ------------------------------------------------------------------------------------------


def test_missing_vllm_gives_a_clear_error(monkeypatch):
    from icdcoder.coders.generative.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(IcdcoderError, match="pip install vllm"):
        VLLMBackend("Qwen/Qwen2.5-0.5B-Instruct")


class _FakeTokenizer:
    def encode(self, text, add_special_tokens=True):
        return text.split()

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        spans, pos = [], 0
        for word in text.split():
            start = text.index(word, pos)
            spans.append((start, start + len(word)))
            pos = start + len(word)
        return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


@pytest.fixture
def fake_vllm(monkeypatch):
    """A ``vllm`` module with the pieces VLLMBackend uses; calls are recorded on ``module.calls``."""
    calls: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def chat(self, messages, sampling_params=None, use_tqdm=True, lora_request=None):
            calls.setdefault("chat", []).append(
                {"messages": messages, "params": sampling_params.kwargs, "use_tqdm": use_tqdm, "lora": lora_request})
            n = sampling_params.kwargs["n"]
            outputs = []
            for p, conversation in enumerate(messages):
                # completions deliberately out of index order
                completions = [types.SimpleNamespace(index=i, text=f"{conversation[-1]['content']}|{i}")
                               for i in reversed(range(n))]
                outputs.append(types.SimpleNamespace(request_id=str(p), outputs=completions))
            return outputs

        def get_tokenizer(self):
            return _FakeTokenizer()

    class LoRARequest:
        def __init__(self, lora_name, lora_int_id, lora_path):
            self.args = (lora_name, lora_int_id, lora_path)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.calls = LLM, SamplingParams, calls
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    lora.request = request
    vllm.lora = lora
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return vllm


def test_vllm_arguments_and_output_order(fake_vllm, tmp_path):
    from icdcoder.coders.generative.vllm_backend import VLLMBackend

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 48, "lora_alpha": 96, "peft_type": "LORA"}))
    backend = VLLMBackend("/models/qwen", lora_path=adapter, dtype="bfloat16", max_model_len=4096,
                          gpu_memory_utilization=0.7, tensor_parallel_size=2, seed=3)
    engine = fake_vllm.calls["engine"]
    assert engine == {"model": "/models/qwen", "dtype": "bfloat16", "gpu_memory_utilization": 0.7,
                      "tensor_parallel_size": 2, "seed": 3, "max_model_len": 4096, "enable_lora": True,
                      "max_lora_rank": 64}

    prompts = [chat("alpha"), chat("beta"), chat("gamma")]
    out = backend.generate(prompts, Sampling(max_new_tokens=50, temperature=0.7, top_p=0.95, n=2, seed=11))
    assert out == [[f"{w}|0", f"{w}|1"] for w in ("alpha", "beta", "gamma")]
    call = fake_vllm.calls["chat"][0]
    assert call["messages"] == prompts and call["use_tqdm"] is False
    assert call["params"] == {"n": 2, "temperature": 0.7, "top_p": 0.95, "max_tokens": 50, "seed": 11}
    assert call["lora"].args == ("icdcoder-adapter", 1, str(adapter))

    assert backend.count_tokens("three short words") == 3
    assert backend.token_offsets("ab  cd") == [(0, 2), (4, 6)]


def test_vllm_without_adapter_uses_defaults(fake_vllm):
    from icdcoder.coders.generative.vllm_backend import VLLMBackend

    backend = VLLMBackend("Qwen/Qwen2.5-0.5B-Instruct")
    assert fake_vllm.calls["engine"] == {"model": "Qwen/Qwen2.5-0.5B-Instruct", "dtype": "auto",
                                         "gpu_memory_utilization": 0.85, "tensor_parallel_size": 1, "seed": 0}
    assert backend.generate([chat("only")], Sampling()) == [["only|0"]]
    call = fake_vllm.calls["chat"][0]
    assert call["lora"] is None and call["params"]["temperature"] == 0.0 and call["params"]["seed"] is None
    assert backend.generate([], Sampling()) == []
    with pytest.raises(IcdcoderError, match="does not exist"):
        VLLMBackend("m", lora_path="/no/such/adapter")
