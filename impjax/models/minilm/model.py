"""The MiniLM model (BERT-style encoder) in Flax NNX, its config and its cost.

:meth:`MiniLM.encode` is the
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
import math
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

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
