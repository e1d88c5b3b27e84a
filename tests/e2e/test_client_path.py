"""The client-sealed path against the real network: the local proxy seals on the client's side,
the gateway and the bus carry only ciphertext, a re-placement needs no resend, and the `openai`
SDK works against the proxy unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from support.bus_dump import every_record
from test_failures import (  # noqa: F401  (fixtures)
    HEARTBEAT_STALE_S,
    bus,
    closing_entry,
    now_ms,
    restore_workers,
    wait_for,
)

from cocoon.client.config import load_config
from cocoon.client.receipts import ReceiptStore
from cocoon.client.server import ProxyServer
from cocoon.client.session import SealedSession
from cocoon.client.transport import SealingTransport
from cocoon.network.engine_process import SMOLLM2_MODEL


class Recorder:
    """A TCP relay in front of the gateway that keeps every byte in both directions."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.seen = bytearray()
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    self.seen += data
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


class Proxy:
    """`cocoon client serve` in a thread: its own loop, a recorder between it and the gateway."""

    def __init__(self, network) -> None:
        self.network = network
        self.loop = asyncio.new_event_loop()
        self.recorder = Recorder(network.http_port)
        self.receipts = ReceiptStore()
        self.url = ""

    def __enter__(self) -> Proxy:
        ready = threading.Event()

        async def main() -> None:
            self._recorder_server = await self.recorder.start()
            gateway = f"http://127.0.0.1:{self.recorder.port}"
            config = load_config(gateway=self.network.gateway_url)
            self.session = SealedSession(
                gateway, self.network.api_key, config, receipts=self.receipts
            )
            self.server = ProxyServer(SealingTransport(self.session), "127.0.0.1", 0)
            await self.server.start()
            self.url = f"http://127.0.0.1:{self.server.port}/v1"
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(main(), self.loop).result(30)
        assert ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            await self.server.stop()
            self._recorder_server.close()
            await self.session.aclose()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def sdk(self, api_key: str = "sk-local-proxy", timeout: float = 90) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=0)


@pytest.fixture
def proxy(network) -> Iterator[Proxy]:
    with Proxy(network) as running:
        yield running


def test_the_openai_sdk_through_the_client_proxy(network, proxy):
    raw = proxy.sdk().chat.completions.with_raw_response.create(
        model=SMOLLM2_MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12
    )
    assert raw.headers["x-cocoon-sealed-by"] == "client"
    assert raw.headers["x-cocoon-trust-root"].startswith("development")
    answer = raw.parse()
    assert answer.choices[0].message.content.strip()
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 12
    receipt = proxy.receipts.all()[-1]
    assert receipt["completion_tokens"] == answer.usage.completion_tokens
    assert receipt["prompt_tokens"] == answer.usage.prompt_tokens

    stream = proxy.sdk().chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for event in stream:
        if event.choices:
            text += event.choices[0].delta.content or ""
        if event.usage:
            usage = event.usage
    assert text.strip() and usage is not None and 0 < usage.completion_tokens <= 16

    completion = proxy.sdk().completions.create(model=SMOLLM2_MODEL, prompt="Once", max_tokens=6)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 6

    # The gateway's own path says it sealed there.
    direct = httpx.post(
        f"{network.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {network.api_key}"},
        json={
            "model": SMOLLM2_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert direct.headers["x-cocoon-sealed-by"] == "gateway"


def test_errors_through_the_proxy_keep_openais_shape(network, proxy, poor_account):
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with pytest.raises(openai.AuthenticationError):
        proxy.sdk("sk-cocoon-000000000000-" + "x" * 43).chat.completions.create(
            model=SMOLLM2_MODEL, **ask
        )
    with pytest.raises(openai.NotFoundError):
        proxy.sdk().chat.completions.create(model="no-such-model", **ask)
    account, _ = poor_account
    with pytest.raises(openai.APIStatusError) as poor:
        proxy.sdk(network.api_keys[account]).chat.completions.create(model=SMOLLM2_MODEL, **ask)
    assert poor.value.status_code == 402
    with pytest.raises(openai.InternalServerError) as capped:
        proxy.sdk().chat.completions.create(
            model=SMOLLM2_MODEL, extra_body={"max_coefficient": 1}, **ask
        )
    assert capped.value.status_code == 503


async def test_canary_never_reaches_the_gateway_or_the_bus_in_clear(
    network, proxy, kafka_bootstrap
):
    canary = f"CANARY-{uuid.uuid4().hex}"
    prompt = f"Repeat this word exactly: {canary}"
    answer = await asyncio.to_thread(
        lambda: proxy.sdk().chat.completions.create(
            model=SMOLLM2_MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=24
        )
    )
    text = answer.choices[0].message.content
    assert text.strip()
    seen = bytes(proxy.recorder.seen)
    assert b"/v1/cocoon/sealed" in seen  # the recorder did see the request go by
    assert canary.encode() not in seen and b"Repeat this word" not in seen
    assert text.encode() not in seen
    for blob in await every_record(kafka_bootstrap, os.environ["COCOON_TOPIC_PREFIX"]):
        assert canary.encode() not in blob
        assert b"Repeat this word" not in blob
        if len(text) >= 8:
            assert text.encode() not in blob


def test_failover_completes_on_another_candidate_without_resending_and_charges_once(
    network,
    bus,  # noqa: F811 (the fixture from test_failures)
    restore_workers,  # noqa: F811 (the fixture from test_failures)
    proxy,
):
    since = now_ms()
    proxy.session.api._workers.ttl_s = 0  # verify with the workers as they are now
    asyncio.run_coroutine_threadsafe(proxy.session.candidates(SMOLLM2_MODEL), proxy.loop).result(
        30
    )  # both verified before they are frozen
    for worker_id in network.worker_ids:
        network.signal_worker(worker_id, signal.SIGSTOP)
    sent_before = proxy.recorder.seen.count(b"POST /v1/cocoon/sealed")
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(
            proxy.sdk().chat.completions.create,
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
        )
        first = wait_for(
            "the first assignment",
            lambda: bus.records("inference.assignments", since_ms=since),
            HEARTBEAT_STALE_S - 1,
        )[0]
        victim = first["worker_id"]
        network.signal_worker(victim, signal.SIGKILL)
        restore_workers.add(victim)
        for worker_id in network.worker_ids:
            if worker_id != victim:
                network.signal_worker(worker_id, signal.SIGCONT)
        answer = call.result(timeout=90)
    assert answer.choices[0].message.content.strip()
    request_id = first["request_id"]
    placed = [
        (a["attempt"], a["worker_id"]) for a in bus.about("inference.assignments", request_id)
    ]
    assert placed[0] == (1, victim) and placed[-1][0] == 2 and placed[-1][1] != victim, placed
    # One sealed request went to the gateway; the second worker opened the same envelope.
    assert proxy.recorder.seen.count(b"POST /v1/cocoon/sealed") == sent_before + 1
    receipt = proxy.receipts.all()[-1]
    assert (receipt["request_id"], receipt["attempt"]) == (request_id, 2)
    entry, entries = closing_entry(bus, request_id)
    assert entry.kind == "charge"
    assert sum(1 for e in entries if e.entry_id == f"charge:{request_id}") == 1


def test_cocoon_client_verify_and_receipts(network, proxy):
    run = [sys.executable, "-m", "cocoon.client.cli"]
    verify = subprocess.run(
        [*run, "verify", "--gateway", network.gateway_url, "--model", SMOLLM2_MODEL, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert {w["worker_id"] for w in report["workers"]} == set(network.worker_ids)
    for worker in report["workers"]:
        assert worker["accepted"] and worker["development_root"], worker
        assert worker["tcb_status"] == "UpToDate" and worker["image_hash"]
        assert {c["name"] for c in worker["checks"]} >= {"report_data", "measurements"}
    table = subprocess.run(
        [*run, "verify", "--gateway", network.gateway_url, "--model", SMOLLM2_MODEL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "development root" in table.stderr
    assert all(w in table.stdout for w in network.worker_ids)
    receipts = subprocess.run([*run, "receipts", "--json"], capture_output=True, text=True)
    assert receipts.returncode == 0
    kept = json.loads(receipts.stdout)
    assert kept and all(r["signature"] and r["signing_key"] for r in kept)
