"""The gRPC inference API against the whole network: a real gRPC client, the real model, billing.

What the HTTP tests prove for `/v1/chat/completions` holds here because it is the same path;
this checks the path is really taken: an answer streamed from the worker's engine, its usage,
the charge billing makes for it, and an HTTP 402 as FAILED_PRECONDITION for a poor account.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from cocoon.gateway.grpc_api import inference_pb2 as pb
from cocoon.gateway.grpc_api import inference_pb2_grpc as pb_grpc
from cocoon.network.engine_process import SMOLLM2_MODEL


def ask(max_tokens: int) -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(
        model=SMOLLM2_MODEL,
        messages=[pb.Message(role="user", content="Name three colours.")],
        max_tokens=max_tokens,
        temperature=0,
    )


def charge_of(network, request_id: str) -> dict | None:
    """The charge billing recorded for `request_id`, from the account's statement."""
    answer = httpx.get(
        f"{network.gateway_url}/v1/cocoon/statement",
        headers={"Authorization": f"Bearer {network.api_key}"},
        timeout=30,
    )
    answer.raise_for_status()
    return next((c for c in answer.json()["charges"] if c["request_id"] == request_id), None)


async def test_an_answer_from_the_real_model_over_grpc(network):
    metadata = (("authorization", f"Bearer {network.api_key}"),)
    async with grpc.aio.insecure_channel(network.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
        assert SMOLLM2_MODEL in [m.id for m in listed.models]
        call = stub.ChatCompletion(ask(16), metadata=metadata)
        events = [event async for event in call]
    text = "".join(e.delta.content for e in events if e.HasField("delta"))
    assert text.strip()
    usage = events[-1].usage
    assert events[-1].HasField("usage") and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    finishes = [
        e.delta.finish_reason for e in events if e.HasField("delta") and e.delta.finish_reason
    ]
    assert len(finishes) == 1
    # Billed as over HTTP: one charge for the request, for the tokens the answer used.
    charge = None
    deadline = time.monotonic() + 30
    while charge is None and time.monotonic() < deadline:
        charge = charge_of(network, events[0].id)
        await asyncio.sleep(0.5)
    assert charge is not None and charge["charged_nanoton"] > 0
    assert charge["completion_tokens"] == usage.completion_tokens


async def test_a_poor_account_gets_failed_precondition(network, poor_account):
    poor = network.api_keys[poor_account[0]]
    async with grpc.aio.insecure_channel(network.grpc_target) as channel:
        call = pb_grpc.InferenceStub(channel).ChatCompletion(
            ask(4096), metadata=(("authorization", f"Bearer {poor}"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [event async for event in call]
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(caught.value.trailing_metadata())["x-cocoon-error-code"] == "insufficient_quota"
