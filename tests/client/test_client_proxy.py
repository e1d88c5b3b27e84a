"""The local proxy with the `openai` SDK, against a gateway-and-worker stand-in that opens the
sealed request with the worker's real keys and answers with sealed chunks and a signed receipt
(the real network runs the same through tests/e2e/test_client_path.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import openai
import pytest
from client_support import MODEL, SimWorker, allow_all, dev_config

from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.client.receipts import ReceiptStore
from cocoon.client.request_ids import partition_of
from cocoon.client.server import ProxyServer
from cocoon.client.session import SealedSession
from cocoon.client.transport import SealingTransport
from cocoon.core.crypto import ResponseSealer, UsageReceipt, sign_receipt
from cocoon.core.crypto.client_seal import client_stream_key, open_client_request
from cocoon.core.crypto.keys import HpkeSuite

WORDS = ["Hel", "lo", " there"]


ACCOUNT = "acct-good"  # the account the fake gateway's keys bill
KNOWN_KEYS = ("Bearer sk-cocoon-good", "Bearer sk-cocoon-limited")
BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
NOT_CO_PARTITIONED = {
    "error": {
        "message": "request_id is not co-partitioned with the account it bills.",
        "type": "invalid_request_error",
        "param": "request_id",
        "code": "request_id_not_co_partitioned",
    }
}


class GatewayAndWorker:
    def __init__(self, sim: SimTdx, key: ServiceKey, worker: SimWorker) -> None:
        self.worker = worker
        self.collateral = sim.collateral().doc
        self.registry = allow_all(key)
        self.evidence = worker.evidence()
        self.bodies: list[dict[str, Any]] = []
        self.request_ids: list[str] = []
        # What the worker's engine streams (before the closing usage chunk), and an error
        # chunk to end with instead of usage (the worker's `chunks.error_chunk`), if any.
        self.script: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
            for w in WORDS
        ]
        self.script[-1]["choices"][0]["finish_reason"] = "stop"
        self.error: dict[str, Any] | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/cocoon/workers":
            offered = {
                "worker_id": self.worker.worker_id,
                "hpke_suite": HpkeSuite.MLKEM768_X25519.value,
                "evidence": {
                    "claims": base64.b64encode(self.evidence.claims).decode(),
                    "tdx_quote": base64.b64encode(self.evidence.tdx_quote).decode(),
                },
            }
            return httpx.Response(
                200, json={"workers": [offered] if request.url.params["model"] == MODEL else []}
            )
        if path == "/v1/cocoon/registry":
            return httpx.Response(200, json={"entries": self.registry})
        if path.startswith("/v1/cocoon/collateral/"):
            return httpx.Response(200, json={"collateral": self.collateral})
        if path == "/v1/cocoon/account":
            if request.headers["authorization"] not in KNOWN_KEYS:
                return httpx.Response(401, json=BAD_KEY)
            return httpx.Response(200, json={"account_id": ACCOUNT, "request_id_partitions": 12})
        if path.startswith("/v1/models/"):
            return httpx.Response(
                404,
                json={
                    "error": {
                        "message": "no such model",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
            )
        if path == "/v1/cocoon/sealed":
            if request.headers["authorization"] == "Bearer sk-cocoon-limited":
                return httpx.Response(
                    429,
                    headers={"Retry-After": "7"},
                    json={
                        "error": {
                            "message": "Rate limit reached for this API key; retry in 6.20 s.",
                            "type": "rate_limit_error",
                            "param": None,
                            "code": "rate_limit_exceeded",
                        }
                    },
                )
            if request.headers["authorization"] != "Bearer sk-cocoon-good":
                return httpx.Response(401, json=BAD_KEY)
            sealed = json.loads(request.content)
            if partition_of(sealed["request_id"], 12) != partition_of(ACCOUNT, 12):
                return httpx.Response(400, json=NOT_CO_PARTITIONED)  # as the gateway refuses
            return self.answer(sealed)
        return httpx.Response(404, json={"error": {"message": "?", "code": "not_found"}})

    def answer(self, sealed: dict[str, Any]) -> httpx.Response:
        [recipient] = sealed["recipients"]
        rid, wid = sealed["request_id"], self.worker.worker_id
        body, request_key = open_client_request(
            self.worker.keys,
            request_id=rid,
            worker_id=wid,
            model=MODEL,
            suite=HpkeSuite(sealed["suite"]),
            enc=base64.b64decode(recipient["enc"]),
            wrapped_key=base64.b64decode(recipient["wrapped_key"]),
            ciphertext=base64.b64decode(sealed["ciphertext"]),
        )
        self.bodies.append(json.loads(body))
        self.request_ids.append(rid)
        sealer = ResponseSealer(client_stream_key(request_key, rid, wid, 1), rid)
        now = int(time.time() * 1000)
        receipt = sign_receipt(
            self.worker.keys,
            UsageReceipt(f"{rid}:1", rid, 1, wid, MODEL, 5, 0, 3, 0, 1000, True, now, now + 1),
        )
        signed = {
            **receipt.receipt.fields(),
            "signing_key": receipt.signing_key.hex(),
            "signature": receipt.signature.hex(),
        }
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        closing: dict[str, Any] = (
            {"choices": [], "usage": usage} if self.error is None else {"error": self.error}
        )
        plains = [*self.script, {**closing, "cocoon_receipt": signed}]
        events = []
        for i, plain in enumerate(plains):
            chunk = sealer.seal(json.dumps(plain).encode(), final=i == len(plains) - 1)
            event = {
                "type": "chunk",
                "worker_id": wid,
                "attempt": 1,
                "seq": chunk.seq,
                "final": chunk.final,
                "ciphertext": base64.b64encode(chunk.ciphertext).decode(),
                "error_code": (self.error or {}).get("code") if i == len(plains) - 1 else None,
            }
            events.append(f"data: {json.dumps(event)}\n\n")
        return httpx.Response(
            200, content="".join(events).encode(), headers={"content-type": "text/event-stream"}
        )


@pytest.fixture
async def proxy(sim: SimTdx, tmp_path):
    key = ServiceKey.generate()
    fake = GatewayAndWorker(sim, key, SimWorker.make(sim, "w-sim-1"))
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake.handle))
    receipts = ReceiptStore(tmp_path / "receipts.jsonl")
    session = SealedSession(
        "http://gateway.test", "sk-cocoon-good", dev_config(sim, key), http=http, receipts=receipts
    )
    server = ProxyServer(SealingTransport(session), "127.0.0.1", 0)
    await server.start()
    yield server, fake, receipts
    await server.stop()
    await session.aclose()


def sdk(server: ProxyServer, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0, timeout=20
    )


async def test_the_sdk_gets_stream_and_non_stream_answers_opened_by_the_proxy(proxy) -> None:
    server, fake, receipts = proxy
    raw = await sdk(server).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        extra_body={"max_coefficient": 2000},
    )
    assert raw.headers["x-cocoon-sealed-by"] == "client"
    assert raw.headers["x-cocoon-trust-root"].startswith("development")
    answer = raw.parse()
    assert answer.choices[0].message.content == "".join(WORDS)
    assert answer.choices[0].finish_reason == "stop" and answer.usage.total_tokens == 8
    # The worker got the engine body: streamed with usage, the Cocoon extension stripped.
    assert fake.bodies[-1]["stream"] is True and "max_coefficient" not in fake.bodies[-1]
    assert receipts.all()[-1]["completion_tokens"] == 3

    stream = await sdk(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for event in stream:
        if event.choices:
            text += event.choices[0].delta.content or ""
        usage = event.usage or usage
    assert text == "".join(WORDS) and usage is not None and usage.completion_tokens == 3


async def test_errors_keep_openais_shape(proxy) -> None:
    server, _, _ = proxy
    with pytest.raises(openai.AuthenticationError):
        await sdk(server, "sk-cocoon-bad").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        await sdk(server).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError):
        await sdk(server).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True},
        )


async def test_a_429_passes_through_with_its_retry_after(proxy) -> None:
    server, _, _ = proxy
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk(server, "sk-cocoon-limited").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    # The gateway's body unchanged, and its Retry-After, which the SDK's retries wait for.
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body == {
        "message": "Rate limit reached for this API key; retry in 6.20 s.",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def call_delta(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    """A tool-call piece as llama-cpp-python streams it (the name and id on every piece)."""
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if name is not None:
        call.update(id=f"call_{name}", type="function")
        call["function"]["name"] = name
    return call


def tool_call_script() -> list[dict[str, Any]]:
    pieces = [call_delta(0, '{"city": ', "get_weather"), call_delta(0, '"Paris"}', "get_weather")]
    return [
        *(
            {"choices": [{"index": 0, "delta": {"tool_calls": [p]}, "finish_reason": None}]}
            for p in pieces
        ),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        # llama-cpp-python repeats the finish in an empty chunk: clients must see it once.
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


async def test_tool_calls_are_relayed_in_openais_shape_finished_once(proxy) -> None:
    server, fake, _ = proxy
    fake.script = tool_call_script()
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": WEATHER,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    answer = await sdk(server).chat.completions.create(**request)
    (call,) = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.id == "call_get_weather" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert answer.choices[0].message.content is None

    deltas, finishes = [], []
    async for chunk in await sdk(server).chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            deltas.extend(choice.delta.tool_calls or ())
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    first, *rest = deltas
    assert first.id == "call_get_weather" and first.function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in rest)
    assert json.loads("".join(d.function.arguments for d in deltas)) == {"city": "Paris"}


async def test_a_choice_the_engine_ends_without_a_finish_gets_stop_once(proxy) -> None:
    server, fake, _ = proxy
    fake.script = [
        {"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in WORDS
    ]
    finishes = []
    async for chunk in await sdk(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        finishes += [c.finish_reason for c in chunk.choices if c.finish_reason is not None]
    assert finishes == ["stop"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_the_engine_refused_is_a_400_with_its_reason(proxy, stream) -> None:
    server, fake, _ = proxy
    fake.script = []
    reason = "strict is true but this engine cannot enforce 'minimum' at schema"
    # What the worker seals when its engine answers 4xx (job.py, ENGINE_REJECTED).
    fake.error = {
        "code": "engine_rejected",
        "message": reason,
        "type": "invalid_request_error",
        "param": "response_format.json_schema.schema",
    }
    with pytest.raises(openai.BadRequestError) as refused:
        result = await sdk(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        async for _ in result:  # a stream's refusal comes with its status line
            pass
    assert refused.value.status_code == 400
    assert refused.value.body["type"] == "invalid_request_error"
    assert refused.value.body["message"] == reason
    assert refused.value.body["param"] == "response_format.json_schema.schema"
    assert len(fake.bodies) == 1  # not retried: a 400 is the request's own fault


async def test_a_failure_after_the_first_byte_is_in_band_then_done(proxy) -> None:
    server, fake, _ = proxy
    fake.error = {"code": "engine_error", "message": "the inference engine failed"}
    async with httpx.AsyncClient(timeout=20) as http:
        response = await http.post(
            f"http://127.0.0.1:{server.port}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and error["code"] == "worker_lost"
    assert "".join(
        json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2]
    ) == "".join(WORDS)


async def test_every_answer_carries_x_request_id_and_a_405_its_allow(proxy) -> None:
    server, fake, _ = proxy
    base = f"http://127.0.0.1:{server.port}/v1"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=20) as http:
        answered = await http.post(f"{base}/chat/completions", json=chat)
        assert answered.status_code == 200
        # The id the request was sealed under: the gateway, the bus and the receipt know it.
        assert answered.headers["x-request-id"] == fake.request_ids[-1]
        responses = {
            "not json": await http.post(f"{base}/chat/completions", content=b"{"),
            "unknown route": await http.post(f"{base}/nothing", json=chat),
            "model not found": await http.get(f"{base}/models/no-such-model"),
            "chat GET": await http.get(f"{base}/chat/completions"),
            "models POST": await http.post(f"{base}/models", json={}),
        }
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "not json": 400,
        "unknown route": 404,
        "model not found": 404,
        "chat GET": 405,
        "models POST": 405,
    }
    for name, response in responses.items():
        assert response.headers.get("x-request-id"), name
        assert "error" in response.json(), name
    assert responses["chat GET"].headers["allow"] == "POST"
    assert responses["models POST"].headers["allow"] == "GET"


def logprob_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


async def test_logprobs_are_relayed_and_joined(proxy) -> None:
    server, fake, _ = proxy
    fake.script = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": w},
                    "logprobs": {"content": [logprob_entry(w, -0.5 * i)], "refusal": None},
                    "finish_reason": "stop" if i == len(WORDS) - 1 else None,
                }
            ]
        }
        for i, w in enumerate(WORDS)
    ]
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "logprobs": True,
        "top_logprobs": 0,
    }
    answer = await sdk(server).chat.completions.create(**request)
    tokens = [e.token for e in answer.choices[0].logprobs.content]
    assert "".join(tokens) == answer.choices[0].message.content == "".join(WORDS)
    assert [e.logprob for e in answer.choices[0].logprobs.content] == [0.0, -0.5, -1.0]
    assert fake.bodies[-1]["logprobs"] is True  # sealed to the worker as asked

    streamed = []
    async for chunk in await sdk(server).chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            streamed += [e.token for e in (choice.logprobs.content if choice.logprobs else [])]
    assert streamed == WORDS


async def test_a_stale_worker_list_is_answered_while_it_is_refreshed_beside_the_request(
    sim: SimTdx,
) -> None:
    from cocoon.client.gateway import GatewayApi

    fake = GatewayAndWorker(sim, ServiceKey.generate(), SimWorker.make(sim, "w-sim-1"))
    fetched: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/cocoon/workers":
            fetched.append(time.monotonic())
        return fake.handle(request)

    ttl = 0.2
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        api = GatewayApi("http://gateway.test", "sk-cocoon-good", http, workers_ttl_s=ttl)
        first = await api.workers(MODEL)
        assert len(fetched) == 1 and first
        assert await api.workers(MODEL) is first  # fresh: no request
        await asyncio.sleep(ttl * 1.2)  # stale, within 3 TTLs
        assert await api.workers(MODEL) is first  # answered at once, from the cache ...
        assert len(fetched) == 1
        await asyncio.sleep(0.05)  # ... while the refresh runs beside it
        assert len(fetched) == 2
        refreshed = await api.workers(MODEL)
        assert refreshed is not first and refreshed == first
        await asyncio.sleep(ttl * 3.2)  # too old to answer with: fetched on the request's path
        assert await api.workers(MODEL) is not refreshed
        assert len(fetched) == 3


async def test_the_registry_is_folded_once_per_list_the_gateway_sent(
    proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cocoon.client.session as session_module

    server, _, _ = proxy
    session = server.transport.session
    folds = []
    real = session_module.RegistryView.from_entries

    def counted(entries, key):
        folds.append(entries)
        return real(entries, key)

    monkeypatch.setattr(session_module.RegistryView, "from_entries", counted)
    for _ in range(3):
        [check] = await session.verify_workers(MODEL)
        assert check.accepted, check.reason
    assert len(folds) == 1  # the cached entries are one list: one fold, three verifications
    session.api._registry = type(session.api._registry)(0)  # expire it: fetched and folded again
    await session.verify_workers(MODEL)
    assert len(folds) == 2
