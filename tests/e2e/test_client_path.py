"""The client-sealed path against the real network: the local proxy seals on the client's side,
the gateway and the bus carry only ciphertext, a re-placement needs no resend, and the `openai`
SDK works against the proxy unchanged."""

from __future__ import annotations

import asyncio
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
from support.client_proxy import Proxy
from support.openai_stream import text_and_usage
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
from cocoon.client.sync import SyncSealingTransport
from cocoon.network.engine_process import SMOLLM2_MODEL


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
    text, usage = text_and_usage(stream)
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


class Hammer:
    """Keeps a key's token bucket empty: threads asking the gateway for /v1/models nonstop, so a
    token that refills (5/s) is almost always taken before the request under test gets it."""

    def __init__(self, gateway_url: str, api_key: str, threads: int = 8) -> None:
        self.url = f"{gateway_url}/v1/models"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.stop = threading.Event()
        self.limited: list[dict] = []  # the gateway's own 429 bodies
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                answer = http.get(self.url, headers=self.headers)
                if answer.status_code == 429:
                    self.limited.append(answer.json())

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_a_rate_limited_key_gets_the_gateways_429_through_the_proxy(network, proxy, poor_account):
    """The gateway's real rate limiter (per key) answers the sealed POST; the proxy passes its
    OpenAI-shaped 429 and Retry-After on unchanged, and the SDK raises RateLimitError."""
    account, _ = poor_account
    key = network.api_keys[account]  # its own bucket: the other tests' keys keep theirs
    ask = {"model": SMOLLM2_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with pytest.raises(openai.APIStatusError) as admitted:  # verifies the workers, warm now
        proxy.sdk(key).chat.completions.create(**ask)
    assert admitted.value.status_code == 402
    limited = None
    with Hammer(network.gateway_url, key) as hammer:
        wait_for("the gateway to rate-limit the key", lambda: hammer.limited, 30)
        for _ in range(10):  # a refilled token may still go to the request under test
            try:
                proxy.sdk(key).chat.completions.create(**ask)
            except openai.RateLimitError as exc:
                limited = exc
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 402, exc
    assert limited is not None, "no request through the proxy met the empty bucket"
    direct = hammer.limited[0]
    assert limited.status_code == 429
    assert limited.response.headers["x-cocoon-sealed-by"] == "client"
    assert int(limited.response.headers["retry-after"]) >= 1
    body = limited.response.json()
    assert set(body["error"]) == set(direct["error"])
    assert (
        (body["error"]["type"], body["error"]["code"])
        == (
            direct["error"]["type"],
            direct["error"]["code"],
        )
        == ("rate_limit_error", "rate_limit_exceeded")
    )


def test_the_sync_openai_sdk_with_the_sealing_transport(network):
    """`openai.OpenAI` with SyncSealingTransport, in process (no proxy), on the real network."""
    receipts = ReceiptStore()
    transport = SyncSealingTransport(
        network.gateway_url,
        network.api_key,
        load_config(gateway=network.gateway_url),
        receipts=receipts,
    )
    with httpx.Client(transport=transport) as http:
        client = openai.OpenAI(
            base_url="http://cocoon.local/v1", api_key="unused", http_client=http, max_retries=0
        )
        answer = client.chat.completions.create(
            model=SMOLLM2_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert answer.choices[0].message.content.strip()
        assert receipts.all()[-1]["request_id"]
        stream = client.chat.completions.create(
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = text_and_usage(stream)
        assert text.strip() and usage is not None and 0 < usage.completion_tokens <= 8


def test_cocoon_client_audit_against_the_gateways_statement(network, proxy):
    """Every receipt kept by this package's requests verifies again from its kept evidence,
    and billing charged each of them once, from that receipt (the real billing and gateway)."""
    since = now_ms()
    answer = proxy.sdk().chat.completions.create(
        model=SMOLLM2_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6
    )
    assert answer.choices[0].message.content
    request_id = proxy.receipts.all()[-1]["request_id"]
    run = [sys.executable, "-m", "cocoon.client.cli", "audit", "--gateway", network.gateway_url]
    key = ["--api-key", network.api_key, "--since", str(since), "--json"]

    def audited() -> dict | None:
        done = subprocess.run([*run, *key], capture_output=True, text=True, timeout=90)
        report = json.loads(done.stdout)
        rows = {r["request_id"]: r for r in report["receipts"]}
        return report if rows[request_id]["charged_nanoton"] else None  # billing caught up

    report = wait_for("billing's charge of the request", audited, 60)
    assert report["findings"] == [], report["findings"]
    row = next(r for r in report["receipts"] if r["request_id"] == request_id)
    assert row["verified"] == "yes" and row["development_root"]
    assert row["charged_nanoton"] > 0 and report["charges"] >= 1

    # The statement is the key's own account, and needs the key.
    denied = httpx.get(f"{network.gateway_url}/v1/cocoon/statement", timeout=30)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"

    # A charge this client holds no receipt for is a finding: forget the receipts.
    kept = proxy.receipts.path.read_text()
    try:
        proxy.receipts.path.write_text("")
        done = subprocess.run([*run, *key[:-1]], capture_output=True, text=True, timeout=90)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"FINDING charge_without_receipt {request_id}" in done.stdout
    finally:
        proxy.receipts.path.write_text(kept)
