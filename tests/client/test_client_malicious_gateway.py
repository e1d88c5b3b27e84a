"""A gateway that lies gets nothing it can open: the client seals only to keys bound, by a quote
it verified itself, into claims it checked (tests with a malicious gateway stand-in)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from client_support import MODEL, SimWorker, allow_all, dev_config

from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.client.errors import NoTrustedWorker
from cocoon.client.session import SealedSession
from cocoon.core.crypto import OpenError
from cocoon.core.crypto.client_seal import open_client_request
from cocoon.core.crypto.keys import HpkeSuite


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class LyingGateway:
    """Serves whatever evidence it likes and keeps every sealed request it is sent."""

    def __init__(self, sim: SimTdx, registry_key: ServiceKey, offered: list[dict[str, Any]]):
        self.collateral = sim.collateral().doc
        self.registry = allow_all(registry_key)
        self.offered = offered
        self.sealed: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/cocoon/workers":
            return httpx.Response(200, json={"model": MODEL, "workers": self.offered})
        if path == "/v1/cocoon/registry":
            return httpx.Response(200, json={"entries": self.registry})
        if path.startswith("/v1/cocoon/collateral/"):
            return httpx.Response(200, json={"collateral": self.collateral})
        if path == "/v1/cocoon/account":
            return httpx.Response(200, json={"account_id": "acct", "request_id_partitions": 12})
        if path == "/v1/cocoon/sealed":
            self.sealed.append(json.loads(request.content))
            return httpx.Response(503, json={"error": {"message": "kept it", "code": "x"}})
        return httpx.Response(404, json={"error": {"message": "no", "code": "not_found"}})


def offer(worker_id: str, claims: bytes, quote: bytes) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "hpke_suite": HpkeSuite.MLKEM768_X25519.value,
        "evidence": {"claims": b64(claims), "tdx_quote": b64(quote), "gpu_evidence": None},
    }


async def send_through(gateway: LyingGateway, sim: SimTdx, key: ServiceKey) -> Exception:
    http = httpx.AsyncClient(transport=httpx.MockTransport(gateway.handle))
    session = SealedSession("http://gateway.test", "sk-cocoon-x", dev_config(sim, key), http=http)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "secret canary"}]}
    with pytest.raises(Exception) as raised:
        async for _ in session.stream("chat.completions", body):
            pass
    await session.aclose()
    return raised.value


async def test_swapped_keys_and_forged_workers_get_no_prompt(sim: SimTdx, tmp_path) -> None:
    key = ServiceKey.generate()
    honest = SimWorker.make(sim, "w-honest")
    attacker = SimWorker.make(sim, "w-attacker")  # keys the gateway's operator holds
    foreign_ca = SimTdx.load_or_create(tmp_path / "forged-ca")
    forged = SimWorker.make(foreign_ca, "w-forged")
    gateway = LyingGateway(
        sim,
        key,
        [
            # The honest worker's quote with the attacker's claims (keys) swapped in.
            offer("w-honest", attacker.claims, honest.evidence().tdx_quote),
            # A "worker" whose quote chains to a CA the operator made.
            offer("w-forged", forged.claims, forged.evidence().tdx_quote),
        ],
    )
    refused = await send_through(gateway, sim, key)
    assert isinstance(refused, NoTrustedWorker), refused
    assert refused.refusals["w-honest"].startswith("policy: report_data:")
    assert refused.refusals["w-forged"].startswith("root:")
    assert gateway.sealed == []  # nothing was sealed, so nothing was sent


async def test_a_gateway_that_adds_its_own_worker_can_open_nothing_it_relays(
    sim: SimTdx, tmp_path
) -> None:
    key = ServiceKey.generate()
    honest = SimWorker.make(sim, "w-honest")
    foreign_ca = SimTdx.load_or_create(tmp_path / "forged-ca")
    forged = SimWorker.make(foreign_ca, "w-forged")
    gateway = LyingGateway(
        sim,
        key,
        [
            offer("w-honest", honest.claims, honest.evidence().tdx_quote),
            offer("w-forged", forged.claims, forged.evidence().tdx_quote),
        ],
    )
    await send_through(gateway, sim, key)
    [sealed] = gateway.sealed
    assert [r["worker_id"] for r in sealed["recipients"]] == ["w-honest"]
    assert b"canary" not in base64.b64decode(sealed["ciphertext"])
    recipient = sealed["recipients"][0]
    # The operator's keys (its forged worker's) open nothing, under any worker id.
    for worker_id in ("w-honest", "w-forged"):
        with pytest.raises(OpenError):
            open_client_request(
                forged.keys,
                request_id=sealed["request_id"],
                worker_id=worker_id,
                model=MODEL,
                suite=HpkeSuite(sealed["suite"]),
                enc=base64.b64decode(recipient["enc"]),
                wrapped_key=base64.b64decode(recipient["wrapped_key"]),
                ciphertext=base64.b64decode(sealed["ciphertext"]),
            )
    # Only the attested worker does.
    body, _ = open_client_request(
        honest.keys,
        request_id=sealed["request_id"],
        worker_id="w-honest",
        model=MODEL,
        suite=HpkeSuite(sealed["suite"]),
        enc=base64.b64decode(recipient["enc"]),
        wrapped_key=base64.b64decode(recipient["wrapped_key"]),
        ciphertext=base64.b64decode(sealed["ciphertext"]),
    )
    assert b"secret canary" in body
