"""The synchronous interface: `openai.OpenAI` with `SyncSealingTransport`, no local proxy, against
the gateway-and-worker stand-in of test_client_proxy (the real network: tests/e2e)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from client_support import MODEL, SimWorker, dev_config
from test_client_proxy import WORDS, GatewayAndWorker

from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.client import SyncSealingTransport
from cocoon.client.receipts import ReceiptStore


@pytest.fixture
def sync_client(
    sim: SimTdx, tmp_path: Path
) -> Iterator[tuple[openai.OpenAI, GatewayAndWorker, ReceiptStore, SyncSealingTransport]]:
    key = ServiceKey.generate()
    fake = GatewayAndWorker(sim, key, SimWorker.make(sim, "w-sim-1"))
    receipts = ReceiptStore(tmp_path / "receipts.jsonl")
    transport = SyncSealingTransport(
        "http://gateway.test",
        "sk-cocoon-good",
        dev_config(sim, key),
        http=httpx.AsyncClient(transport=httpx.MockTransport(fake.handle)),
        receipts=receipts,
    )
    http = httpx.Client(transport=transport)
    client = openai.OpenAI(
        base_url="http://cocoon.local/v1", api_key="unused", http_client=http, max_retries=0
    )
    yield client, fake, receipts, transport
    http.close()


def test_the_sync_openai_sdk_seals_and_opens_in_process(sync_client) -> None:
    client, fake, receipts, _ = sync_client
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert raw.headers["x-cocoon-sealed-by"] == "client"
    answer = raw.parse()
    assert answer.choices[0].message.content == "".join(WORDS)
    assert answer.usage is not None and answer.usage.total_tokens == 8
    # The stand-in opened a real sealed body: the prompt travelled only as ciphertext.
    assert fake.bodies[-1]["messages"] == [{"role": "user", "content": "hi"}]
    assert receipts.all()[-1]["completion_tokens"] == 3

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for event in stream:
        if event.choices:
            pieces.append(event.choices[0].delta.content or "")
        usage = event.usage or usage
    assert "".join(pieces) == "".join(WORDS) and usage is not None
    assert usage.completion_tokens == 3


def test_sync_errors_keep_openais_shape(sync_client) -> None:
    client, _, _, _ = sync_client
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    bad_key = client.with_options(api_key="sk-cocoon-bad")
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_the_sync_transport_serves_threads_at_once_and_closes(sync_client) -> None:
    client, _, receipts, transport = sync_client
    answers: list[str] = []

    def ask() -> None:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        answers.append(answer.choices[0].message.content or "")

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == ["".join(WORDS)] * 4 and len(receipts.all()) == 4
    transport.close()
    assert not transport._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        transport.handle_request(httpx.Request("GET", "http://cocoon.local/v1/models"))
