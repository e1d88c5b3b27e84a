"""The local embedding engine: OpenAI's `POST /v1/embeddings` over all-MiniLM-L6-v2 in numpy.

Run as `python -m cocoon.network.embedding_server --port P [--host H] [--model-alias ID]`.

Why our own server: llama.cpp serves embeddings only from a GGUF, and converting this model needs
llama.cpp's conversion script and torch, which do not install here; sentence-transformers needs
torch too. The model is small enough that numpy runs it at a few milliseconds per short
sentence on one core (`cocoon.network.minilm`), and the server is the part of the OpenAI API a
worker-proxy needs: `GET /v1/models` and `POST /v1/embeddings`, with OpenAI's errors.

What it accepts (the worker-proxy forwards the client's body, nulls dropped):
* `input`: a string, a list of strings, a token array (this model's WordPiece ids, without
  `[CLS]`/`[SEP]`, which are added as for text), or a list of token arrays; at most 2048 inputs,
  none empty, each at most `max_tokens` (256) tokens with the two special tokens. Longer inputs
  are refused, not cut: the answer would silently describe part of the text.
* `encoding_format`: `float` (default) or `base64` (little-endian float32, as OpenAI sends it).
* `dimensions`: only the model's own (384); the model was not trained to be shortened.
* `model`, `user`: accepted; the model is whatever this server serves.
`usage.prompt_tokens` counts every token the model read, special tokens included.
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Annotated, Any, Literal

import numpy as np
import uvicorn
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cocoon.network.minilm import MINILM_MODEL, MiniLM

MAX_INPUTS = 2048  # OpenAI's limit per request

TokenArray = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Text = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
        | TokenArray
        | Annotated[list[TokenArray], Field(min_length=1, max_length=MAX_INPUTS)]
    )
    model: Annotated[str, Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class Refused(ValueError):
    """A request this engine cannot serve: a 400 naming `param`."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _refusal(message: str, param: str | None) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": param}
    return JSONResponse({"error": {**error, "code": "invalid_request"}}, status_code=400)


def token_sequences(model: MiniLM, given: Any) -> list[list[int]]:
    """Each input as the token sequence the model reads, checked against its limits."""
    if isinstance(given, str):
        items: list[Any] = [given]
    elif given and all(isinstance(x, int) for x in given):
        items = [given]  # one token array
    else:
        items = list(given)
    sequences = []
    for index, item in enumerate(items):
        param = "input" if len(items) == 1 else f"input[{index}]"
        if isinstance(item, str):
            sequence = model.tokenize(item)
        else:
            if (bad := next((t for t in item if t >= model.vocab_size), None)) is not None:
                raise Refused(
                    f"Token id {bad} is outside this model's vocabulary "
                    f"(0..{model.vocab_size - 1}).",
                    param,
                )
            sequence = model.wrap(item)
        if len(sequence) > model.max_tokens:
            raise Refused(
                f"This model's maximum input length is {model.max_tokens} tokens; "
                f"{param} has {len(sequence)} (special tokens included).",
                param,
            )
        sequences.append(sequence)
    return sequences


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]


def create_app(model: MiniLM, model_id: str = MINILM_MODEL) -> FastAPI:
    app = FastAPI(title="Cocoon embedding engine")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        entry = {"id": model_id, "object": "model", "created": 0, "owned_by": "cocoon"}
        meta = {"dimensions": model.dimensions, "max_input_tokens": model.max_tokens}
        return {"object": "list", "data": [{**entry, "meta": meta}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = EmbeddingRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            param = ".".join(str(p) for p in first["loc"][:1]) or None
            return _refusal(f"Invalid value for '{param}': {first['msg']}.", param)
        if body.dimensions is not None and body.dimensions != model.dimensions:
            return _refusal(
                f"This model's embeddings have {model.dimensions} dimensions and cannot be "
                f"shortened (it was not trained for it); 'dimensions' must be "
                f"{model.dimensions} or left out.",
                "dimensions",
            )
        try:
            sequences = token_sequences(model, body.input)
        except Refused as exc:
            return _refusal(str(exc), exc.param)
        # numpy releases the GIL in its kernels: the event loop keeps answering meanwhile.
        vectors = await to_thread.run_sync(model.embed, sequences)
        tokens = sum(len(s) for s in sequences)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": model_id, "usage": usage})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-alias", default=MINILM_MODEL)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    app = create_app(MiniLM(), args.model_alias)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
