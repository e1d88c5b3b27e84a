"""The local embedding engine against references it does not share code with.

* A reference computation written here: sentence-transformers' pipeline for the model (BERT,
  mean pooling, L2 normalisation) in float64, one sentence at a time (no padding, no mask),
  with the exact erf; the engine batches in float32 with padding and an erf approximation.
* The similarities sentence-transformers publishes for this model in its quick start.
* The engine's process through the `openai` SDK: float and base64 agree, token arrays agree
  with text, and what the model cannot do is refused as OpenAI refuses it.
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
from support.minilm_reference import reference_embedding

from cocoon.network.engine_process import EngineProcess
from cocoon.network.minilm import MiniLM

SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A much longer sentence, so that the batch is padded: confidential inference keeps "
    "prompts sealed from everyone but the attested enclave.",
    "ok",
]


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


def test_the_tokenizer_gives_bert_uncased_word_pieces_with_the_special_tokens(model: MiniLM):
    # bert-base-uncased's ids, which this model's vocabulary is: [CLS] hello world [SEP]
    assert model.tokenize("Hello world") == [101, 7592, 2088, 102]
    assert model.wrap([7592, 2088]) == [101, 7592, 2088, 102]


def test_batched_float32_embeddings_match_the_float64_reference(model: MiniLM):
    sequences = [model.tokenize(s) for s in SENTENCES]
    assert len({len(s) for s in sequences}) > 1  # the batch really is padded
    got = model.embed(sequences)
    for row, sequence in zip(got, sequences, strict=True):
        expected = reference_embedding(sequence)
        cosine = float(row @ expected / np.linalg.norm(row))
        assert cosine > 0.999, cosine
        assert abs(float(np.linalg.norm(row)) - 1.0) < 1e-5


def test_similarities_are_the_ones_sentence_transformers_publishes(model: MiniLM):
    # sentence-transformers' quick start, all-MiniLM-L6-v2: 0.6660, 0.1046, 0.1411.
    e = model.embed([model.tokenize(s) for s in SENTENCES[:3]])
    similarity = e @ e.T
    assert similarity[0, 1] == pytest.approx(0.6660, abs=5e-4)
    assert similarity[0, 2] == pytest.approx(0.1046, abs=5e-4)
    assert similarity[1, 2] == pytest.approx(0.1411, abs=5e-4)


@pytest.fixture
def engine(embedding_engine: EngineProcess) -> EngineProcess:
    return embedding_engine


def test_the_engine_serves_openai_embeddings_in_float_and_base64(engine: EngineProcess):
    client = openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0)
    floats = client.embeddings.create(
        model=engine.model, input=SENTENCES[:2], encoding_format="float"
    )
    # The SDK asks for base64 by default and decodes it to floats itself.
    decoded = client.embeddings.create(model=engine.model, input=SENTENCES[:2])
    assert [d.index for d in floats.data] == [0, 1]
    for a, b in zip(floats.data, decoded.data, strict=True):
        assert len(a.embedding) == 384
        assert np.allclose(a.embedding, b.embedding, atol=1e-7)
    assert np.dot(floats.data[0].embedding, floats.data[1].embedding) == pytest.approx(
        0.6660, abs=5e-4
    )
    # Every input's own tokens with its [CLS] and [SEP].
    tokens = sum(len(MiniLM().tokenize(s)) for s in SENTENCES[:2])
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens


def test_a_token_array_embeds_as_its_text(engine: EngineProcess):
    client = openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0)
    text = client.embeddings.create(
        model=engine.model, input="Hello world", encoding_format="float"
    )
    ids = client.embeddings.create(
        model=engine.model, input=[[7592, 2088], [7592]], encoding_format="float"
    )
    assert np.allclose(text.data[0].embedding, ids.data[0].embedding, atol=1e-6)
    assert ids.usage.prompt_tokens == 4 + 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "dimensions": 128}, "dimensions"),
        ({"input": "word " * 300}, "input"),
        ({"input": ["fine", "word " * 300]}, "input[1]"),
        ({"input": [[7592, 30522]]}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_what_the_model_cannot_do_is_a_400_naming_the_parameter(
    engine: EngineProcess, body: dict, param: str
):
    client = openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=engine.model, **body)
    assert refused.value.body["param"] == param  # type: ignore[index]
