"""Embeddings through the whole network (`cocoon up`'s), with the official `openai` SDK, on both
paths: the gateway seals the request, or the client proxy does and the gateway relays only
ciphertext. The vectors come from the embedding worker's real model and are checked against a
reference computation; billing charges the input tokens once, from the worker's receipt."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import openai
import pytest
from support.minilm_reference import reference_embedding

from cocoon.network.engine_process import SMOLLM2_MODEL
from cocoon.network.local import LocalNetwork
from cocoon.network.minilm import MINILM_MODEL, MiniLM

TEXTS = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
PRICE_PER_TOKEN = 100  # nanoTON, as `cocoon up` sets it; the workers' coefficient is 1.0x


@pytest.fixture(scope="module")
def tokenizer() -> MiniLM:
    return MiniLM()


def _cosine(a: list[float], b: np.ndarray) -> float:
    v = np.asarray(a)
    return float(v @ b / (np.linalg.norm(v) * np.linalg.norm(b)))


def test_models_lists_both_models_with_capabilities_context_and_price(network: LocalNetwork):
    r = httpx.get(
        f"{network.gateway_url}/v1/models",
        headers={"Authorization": f"Bearer {network.api_key}"},
        timeout=30,
    )
    listed = {m["id"]: m for m in r.json()["data"]}
    chat, embedder = listed[SMOLLM2_MODEL], listed[MINILM_MODEL]
    assert chat["capabilities"] == ["chat", "tools"] and chat["context_length"] == 2048
    assert embedder["capabilities"] == ["embeddings"] and embedder["context_length"] == 256
    for model in (chat, embedder):
        assert model["pricing"]["prompt"] == PRICE_PER_TOKEN * model["min_coefficient"] / 1000


def test_the_sync_sdk_gets_the_models_vectors_in_float_and_base64(api, tokenizer):
    client = api.sdk(max_retries=0)
    raw = client.embeddings.with_raw_response.create(
        model=MINILM_MODEL, input=TEXTS, encoding_format="float"
    )
    assert raw.headers["x-cocoon-sealed-by"] == api.sealed_by
    floats = raw.parse()
    assert floats.model == MINILM_MODEL and [d.index for d in floats.data] == [0, 1, 2]
    for text, item in zip(TEXTS, floats.data, strict=True):
        assert len(item.embedding) == 384
        assert _cosine(item.embedding, reference_embedding(tokenizer.tokenize(text))) > 0.999
    expected_tokens = sum(len(tokenizer.tokenize(t)) for t in TEXTS)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == expected_tokens

    # The SDK's default: it asks for base64 and decodes it itself.
    decoded = client.embeddings.create(model=MINILM_MODEL, input=TEXTS)
    for a, b in zip(floats.data, decoded.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
    # A token array (this model's word pieces) embeds as its text.
    ids = client.embeddings.create(
        model=MINILM_MODEL, input=[tokenizer.tokenize(TEXTS[0])[1:-1]], encoding_format="float"
    )
    assert np.allclose(ids.data[0].embedding, floats.data[0].embedding, atol=1e-5)


async def test_the_async_sdk_embeds_concurrent_requests(api, tokenizer):
    client = api.async_sdk(max_retries=0)
    answers = await asyncio.gather(
        *(client.embeddings.create(model=MINILM_MODEL, input=text) for text in TEXTS)
    )
    vectors = [np.asarray(a.data[0].embedding) for a in answers]
    # sentence-transformers' published similarities for these sentences with this model.
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.6660, abs=5e-4)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(0.1046, abs=5e-4)


def test_what_a_model_cannot_do_is_a_400_in_openais_shape(api):
    client = api.sdk(max_retries=0)
    with pytest.raises(openai.BadRequestError) as wrong_model:
        client.embeddings.create(model=SMOLLM2_MODEL, input="Hello")
    assert wrong_model.value.code == "model_not_supported"
    assert MINILM_MODEL in wrong_model.value.message
    with pytest.raises(openai.BadRequestError) as no_chat:
        client.chat.completions.create(
            model=MINILM_MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert no_chat.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError) as shortened:
        client.embeddings.create(model=MINILM_MODEL, input="Hello", dimensions=64)
    assert shortened.value.param == "dimensions" and "384" in shortened.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=MINILM_MODEL, input=["fine", "word " * 300])
    assert too_long.value.param == "input[1]" and "256" in too_long.value.message


def test_the_input_tokens_are_charged_once_from_the_workers_receipt(api, network, tokenizer):
    since = int(time.time() * 1000)
    raw = api.sdk(max_retries=0).embeddings.with_raw_response.create(
        model=MINILM_MODEL, input=["charge me", "for both of these"]
    )
    tokens = raw.parse().usage.prompt_tokens
    assert tokens == len(tokenizer.tokenize("charge me")) + len(
        tokenizer.tokenize("for both of these")
    )
    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 60
    while True:
        statement = httpx.get(
            f"{network.gateway_url}/v1/cocoon/statement",
            params={"since": since},
            headers={"Authorization": f"Bearer {network.api_key}"},
            timeout=90,
        ).json()
        charges = [c for c in statement["charges"] if c["request_id"] == request_id]
        if charges or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(charges) == 1, statement
    charge = charges[0]
    assert (charge["model"], charge["prompt_tokens"], charge["completion_tokens"]) == (
        MINILM_MODEL,
        tokens,
        0,
    )
    assert charge["charged_nanoton"] == tokens * PRICE_PER_TOKEN
