"""all-MiniLM-L6-v2 computed the slow, plain way, to check the embedding engine against.

sentence-transformers' pipeline for the model (BERT over `[CLS] tokens [SEP]`, mean pooling,
L2 normalisation), written again without sharing code with `cocoon.network.minilm`: float64,
one sequence at a time (no padding, no mask), one attention head at a time, the exact erf.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
from safetensors.numpy import load_file

from cocoon.network.minilm import minilm_dir


@functools.cache
def _weights() -> tuple[dict, dict[str, np.ndarray]]:
    directory = minilm_dir()
    config = json.loads((directory / "config.json").read_text())
    weights = load_file(str(directory / "model.safetensors"))
    return config, {k: v.astype(np.float64) for k, v in weights.items()}


def reference_embedding(text_ids: list[int]) -> np.ndarray:
    """all-MiniLM-L6-v2 as sentence-transformers computes it, in float64, for one sequence."""
    config, w = _weights()
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
        return (x - mu) / sd * w[f"{name}.weight"] + w[f"{name}.bias"]

    def dense(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    erf = np.vectorize(math.erf)
    n = len(text_ids)
    x = (
        w["embeddings.word_embeddings.weight"][text_ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = norm(x, "embeddings.LayerNorm")
    size = x.shape[1] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        heads_out = []
        q = dense(x, f"{p}.attention.self.query")
        k = dense(x, f"{p}.attention.self.key")
        v = dense(x, f"{p}.attention.self.value")
        for h in range(heads):
            cols = slice(h * size, (h + 1) * size)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(size)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            heads_out.append(probs @ v[:, cols])
        attended = dense(np.concatenate(heads_out, axis=1), f"{p}.attention.output.dense")
        x = norm(x + attended, f"{p}.attention.output.LayerNorm")
        inner = dense(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        x = norm(x + dense(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    pooled = x.mean(axis=0)
    return pooled / np.linalg.norm(pooled)
