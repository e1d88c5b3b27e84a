"""A GPU owner's worker joins the network by itself: `cocoon worker init` + `cocoon worker run`,
no registry entry of its own (only the image and model the operator allows), serves a request
and is credited under the payout address it attested."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.codec import models
from cocoon.core.contracts import Topic
from cocoon.network.engine_process import SMOLLM2_MODEL
from cocoon.worker_proxy.receipts_log import read_receipts

COCOON = [sys.executable, "-m", "cocoon.core.cli"]


def cocoon(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COCOON, *args], capture_output=True, text=True, env=env, timeout=120)


def credits_of(bootstrap: str, account: str) -> list[dict]:
    found: list[dict] = []

    def keep(record: BroadcastRecord) -> None:
        value = record.value
        if (
            record.key == account
            and value
            and value["kind"] == models.LedgerEntryKind.WORKER_CREDIT
        ):
            found.append(value)

    async def read() -> None:
        reader = BroadcastReader(bootstrap, [Topic.BILLING_LEDGER], keep, from_beginning=True)
        await reader.start()
        try:
            await reader.catch_up(30)
        finally:
            await reader.stop()

    asyncio.run(read())
    return found


# The network's start-up counts against the first test of the package; on a loaded 2-core
# machine that and a third worker's attestation take most of the default 300 s.
@pytest.mark.timeout(900)
def test_self_joined_worker_serves_and_is_credited_to_its_attested_address(
    network, tmp_path: Path
) -> None:
    worker_id = f"owner-{uuid.uuid4().hex[:6]}"
    address = "0:" + os.urandom(32).hex()
    config = tmp_path / "worker.toml"
    env = {
        **os.environ,
        "COCOON_GRPC_HEALTH_PORT": "0",
        "COCOON_METRICS_PORT": "0",
        "COCOON_LOG_FORMAT": "human",
        "COCOON_HEARTBEAT_SECONDS": "1",
    }
    # The network's own CPU engine stands in for the owner's GPU engine (a second llama.cpp
    # would only slow this 2-core machine down; `--local-engine` is the same launcher).
    engine_url = network.engines[0].base_url
    made = cocoon(
        "worker", "init", "--payout-address", address, "--worker-id", worker_id,
        "--model", SMOLLM2_MODEL, "--engine-url", engine_url, "--config", str(config),
        "--bootstrap", os.environ["COCOON_KAFKA_BOOTSTRAP"], env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*COCOON, "worker", "run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        receipts_file = Path(tomllib.loads(config.read_text())["receipts_file"])
        status = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status.get("verdict") != "TRUSTED":
            assert worker.poll() is None, log.read_text()
            shown = cocoon("worker", "status", "--config", str(config), "--json", env=env)
            status = json.loads(shown.stdout) if shown.returncode == 0 else {}
            time.sleep(1)
        assert status.get("verdict") == "TRUSTED", (status, log.read_text()[-3000:])
        assert status["payout_address"] == address
        network.wait_for_workers(ready_timeout_s=60)

        # The scheduler places by load: three at once fill every worker, until one lands here.
        headers = {"Authorization": f"Bearer {network.api_key}"}
        body = {"model": SMOLLM2_MODEL, "max_tokens": 8, "messages": [
            {"role": "user", "content": "Say hi."}]}  # fmt: skip

        def ask(_: int) -> int:
            url = f"{network.gateway_url}/v1/chat/completions"
            return httpx.post(url, json=body, headers=headers, timeout=180).status_code

        # Until billing credits it: a receipt it signed may be for an attempt that was placed
        # again elsewhere after its lease ran out, which billing rightly does not pay.
        account = f"worker:{worker_id}"
        credits: list[dict] = []
        deadline = time.monotonic() + 300
        with ThreadPoolExecutor(3) as pool:
            while time.monotonic() < deadline and not credits:
                assert set(pool.map(ask, range(3))) == {200}
                if receipts_file.is_file() and list(read_receipts(receipts_file)):
                    settle = time.monotonic() + 30
                    while time.monotonic() < settle and not credits:
                        credits = credits_of(os.environ["COCOON_KAFKA_BOOTSTRAP"], account)
                        time.sleep(0.5)
        kept = list(read_receipts(receipts_file))
        assert kept and all(r["payout_address"] == address for r in kept)
        assert credits and all(c["available_delta_nanoton"] > 0 for c in credits)
        # Billing files each credit under the address the worker's verdict attested.
        metas = [json.loads(c["memo"])["entry"]["meta"] for c in credits]
        assert {m["payout_address"] for m in metas} == {address}
        shown = cocoon("worker", "status", "--config", str(config), "--json", env=env)
        status = json.loads(shown.stdout)
        assert status["earned_nanoton"] == sum(c["available_delta_nanoton"] for c in credits)
        assert status["requests_served"] >= 1
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
