"""The gRPC inference API with a real gRPC client (grpc.aio channel) against a real server.

The backend is the scripted stand-in for the network (gateway_doubles), as for the HTTP tests;
tests/e2e/test_grpc.py runs it against the real network. The stubs must be what protoc makes of
inference.proto today.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gateway_doubles import MODEL, ScriptedBackend, default_backend
from support.repo import SERVICES_DIR

from cocoon.core.request_ids import is_co_partitioned
from cocoon.gateway.api import ApiSettings, KeyStore
from cocoon.gateway.api.auth import Authenticator
from cocoon.gateway.api.ratelimit import RateLimiter
from cocoon.gateway.grpc_api import inference_pb2 as pb
from cocoon.gateway.grpc_api import inference_pb2_grpc as pb_grpc
from cocoon.gateway.grpc_api.server import InferenceService, inference_server

SOURCE = SERVICES_DIR / "gateway" / "src"
PROTO = "cocoon/gateway/grpc_api/inference.proto"


@pytest.fixture
async def served() -> AsyncIterator[tuple[pb_grpc.InferenceStub, str, ScriptedBackend]]:
    backend, keys = default_backend(), KeyStore()
    key = keys.create("acct-grpc")
    settings = ApiSettings()
    authenticator = Authenticator(keys, RateLimiter(1000, 1000))
    server, port = inference_server(
        InferenceService(backend, authenticator, settings), "127.0.0.1", 0
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.InferenceStub(channel), key, backend
    finally:
        await server.stop(grace=None)


def ask(model: str = MODEL, **fields) -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(
        model=model, messages=[pb.Message(role="user", content="Say hello")], **fields
    )


async def test_a_streamed_answer_then_its_usage(served):
    stub, key, backend = served
    call = stub.ChatCompletion(ask(max_tokens=20), metadata=(("authorization", f"Bearer {key}"),))
    events = [event async for event in call]
    text = "".join(e.delta.content for e in events if e.HasField("delta"))
    assert text == "Hello from the enclave!"
    finishes = [
        e.delta.finish_reason for e in events if e.HasField("delta") and e.delta.finish_reason
    ]
    assert finishes == ["stop"]
    assert events[-1].HasField("usage") and events[-1].usage.total_tokens == 10
    assert len({e.id for e in events}) == 1
    assert dict(await call.initial_metadata())["x-request-id"] == events[0].id
    account, request = backend.submitted[-1]
    assert account == "acct-grpc" and request.max_tokens == 20 and request.stream
    # Minted for the account, as billing's shards need.
    assert request.request_id == events[0].id and is_co_partitioned(request.request_id, account)


async def test_extra_parameters_reach_the_request_as_over_http(served):
    stub, key, backend = served
    extra = {"response_format": {"type": "json_object"}, "user": "u-1"}
    call = stub.ChatCompletion(
        ask(extra_json=json.dumps(extra), max_coefficient=1500, timeout_seconds=30),
        metadata=(("authorization", f"Bearer {key}"),),
    )
    [event async for event in call]
    _, request = backend.submitted[-1]
    assert request.body["response_format"] == {"type": "json_object"}
    assert (request.max_coefficient, request.timeout, request.user) == (1500, 30, "u-1")


@pytest.mark.parametrize(
    ("model", "fields", "status", "code"),
    [
        (MODEL, {"temperature": 9.0}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        (MODEL, {"extra_json": '{"model": "x"}'}, grpc.StatusCode.INVALID_ARGUMENT, None),
        ("poor", {}, grpc.StatusCode.FAILED_PRECONDITION, "insufficient_quota"),
        ("busy", {}, grpc.StatusCode.UNAVAILABLE, "no_worker_available"),
        ("late", {}, grpc.StatusCode.DEADLINE_EXCEEDED, None),
        ("dies", {}, grpc.StatusCode.UNAVAILABLE, "worker_lost"),
        ("no-such-model", {}, grpc.StatusCode.NOT_FOUND, "model_not_found"),
    ],
)
async def test_errors_end_the_call_with_the_mapped_status(served, model, fields, status, code):
    stub, key, _ = served
    call = stub.ChatCompletion(ask(model, **fields), metadata=(("authorization", f"Bearer {key}"),))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [event async for event in call]
    assert caught.value.code() == status, caught.value.details()
    trailing = dict(caught.value.trailing_metadata() or ())
    if code is not None:
        assert trailing["x-cocoon-error-code"] == code
    assert caught.value.details()


async def test_a_failure_after_the_first_delta_still_ends_with_a_status(served):
    stub, key, _ = served
    call = stub.ChatCompletion(ask("dies"), metadata=(("authorization", f"Bearer {key}"),))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            received.append(event.delta.content)
    assert "".join(received) == "Hello" and caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_no_key_or_a_wrong_key_is_unauthenticated(served):
    stub, _, backend = served
    before = len(backend.submitted)
    for metadata in ((), (("authorization", "Bearer sk-cocoon-nope"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [event async for event in stub.ChatCompletion(ask(), metadata=metadata)]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as listed:
            await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
        assert listed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(backend.submitted) == before  # nothing reached the network


async def test_a_cancelled_call_cancels_the_work(served):
    stub, key, backend = served
    call = stub.ChatCompletion(ask("stall"), metadata=(("authorization", f"Bearer {key}"),))
    first = await call.read()
    assert first.delta.content == "tick"
    call.cancel()
    for _ in range(100):
        if backend.cancelled:
            break
        await asyncio.sleep(0.05)
    assert backend.cancelled, "the backend stream was not closed"


async def test_models_lists_the_attested_ones(served):
    stub, key, _ = served
    listed = await stub.ListModels(
        pb.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),)
    )
    assert [(m.id, m.attested_workers, m.min_coefficient) for m in listed.models] == [
        (MODEL, 2, 1000)
    ]


def test_the_stubs_are_what_protoc_makes_of_the_proto(tmp_path: Path):
    made = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{SOURCE}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(SOURCE / PROTO)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        name = PROTO.replace(".proto", suffix)
        assert (tmp_path / name).read_text() == (SOURCE / name).read_text(), (
            f"{name} is stale: regenerate it (the command is at the top of inference.proto)"
        )
