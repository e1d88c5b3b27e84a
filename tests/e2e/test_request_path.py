"""One confidential request end to end: real broker, real services, real model."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient

from cocoon.network.engine_process import SMOLLM2_MODEL


def client(network) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.gateway_url}/v1", api_key=network.api_key)


def test_openai_sdk_non_streaming(network):
    answer = client(network).chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
    )
    assert answer.choices[0].message.content.strip()
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 16


def test_openai_sdk_streaming_with_usage(network):
    stream = client(network).chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for event in stream:
        if event.choices:
            text += event.choices[0].delta.content or ""
        if event.usage:
            usage = event.usage
    assert text.strip()
    assert usage is not None and 0 < usage.completion_tokens <= 24


def test_unknown_model_is_404_at_once(network):
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError):
        client(network).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert time.monotonic() - started < 2.0


def test_bad_key_is_401(network):
    response = httpx.post(
        f"{network.gateway_url}/v1/chat/completions",
        headers={"Authorization": "Bearer sk-cocoon-not-a-key"},
        json={"model": SMOLLM2_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_insufficient_balance_is_402_with_the_exact_shortfall(network, poor_account):
    account, balance = poor_account
    response = httpx.post(
        f"{network.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {network.api_keys[account]}"},
        json={
            "model": SMOLLM2_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
        },
        timeout=30,
    )
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota"
    shortfall = int(re.search(r"balance: (\d+) nanoTON short", error["message"]).group(1))
    required = int(re.search(r"cost up to (\d+) nanoTON", error["message"]).group(1))
    assert shortfall == required - balance


async def _every_record(bootstrap: str, prefix: str) -> list[bytes]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        topics = [t for t in admin.list_topics() if t.startswith(prefix)]
    finally:
        admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_uncommitted", enable_auto_commit=False
    )
    await consumer.start()
    blobs: list[bytes] = []
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in consumer.partitions_for_topic(topic) or ()
            ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    blobs += [record.key or b"", record.value or b""]
                    blobs += [bytes(value) for _, value in record.headers]
            # Every partition, not only those that returned records: one whose log ends in a
            # transaction marker moves past it with an empty fetch.
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        assert not remaining, f"could not read to the end of {remaining}"
    finally:
        await consumer.stop()
    assert len(topics) > 20
    return blobs


async def test_privacy_canary_never_on_the_bus(network, kafka_bootstrap):
    canary = f"CANARY-{uuid.uuid4().hex}"
    async with openai.AsyncOpenAI(
        base_url=f"{network.gateway_url}/v1", api_key=network.api_key
    ) as sdk:
        answer = await sdk.chat.completions.create(
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": f"Repeat this code exactly: {canary}"}],
            max_tokens=48,
        )
    completion = answer.choices[0].message.content
    assert completion.strip()
    blobs = await _every_record(kafka_bootstrap, network_prefix())
    assert blobs, "nothing was read from the bus"
    needles = [canary.encode(), canary[7:23].encode()]
    # Any 24-character run of the completion would betray it (short runs like "the" would not).
    text = completion.encode()
    needles += [text[i : i + 24] for i in range(0, max(1, len(text) - 24), 8) if len(text) >= 24]
    for blob in blobs:
        for needle in needles:
            assert needle not in blob, "plaintext found on the bus"


def network_prefix() -> str:
    import os

    return os.environ["COCOON_TOPIC_PREFIX"]
