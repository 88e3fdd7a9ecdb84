"""A Gemma-style decoder-only language model in Flax NNX.

``embedder`` (``nnx.Embed``, scaled by ``sqrt(width)``) feeds ``depth`` blocks held in an
``nnx.List``; each block is ``x + attn(RMSNorm(x))`` then ``x + mlp(RMSNorm(x))``, and
``final_norm`` and the tied embedding (``embedder.attend``) give the logits. Attention is
grouped-query: ``q_einsum`` (``'BTD,NDH->BTNH'``, kernel (num_heads, width, head_dim)) gives
the queries, ``kv_einsum`` (``'BSD,CKDH->CBSKH'``, kernel (2, num_kv_heads, width, head_dim))
the keys and values, rotary position embeddings turn q and k, the queries are reshaped to
(kv_heads, heads per kv head) so each group shares one key and value head, and
``attn_vec_einsum`` (``'BTNH,NHD->BTD'``) projects the heads back. ``num_kv_heads`` may be
``num_heads`` (multi-head) or 1 (multi-query); ``kv_einsum`` stays separate from
``q_einsum`` either way. The MLP is gated: ``gating_einsum`` (kernel (2, width, mlp_dim))
gives the gate and the up projection, ``gelu(gate) * up`` goes through ``linear``
(``'BTF,FD->BTD'``). RMSNorm scales by ``1 + scale`` (``scale`` starts at zero).

References: Gemma Team 2024, "Gemma: Open Models Based on Gemini Research and Technology";
Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints"; Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax.models import gemma
  >>> config = gemma.GemmaConfig(vocab_size=11, width=8, depth=1, num_heads=4,
  ...                            num_kv_heads=2, head_dim=2, mlp_dim=12)
  >>> model = gemma.Gemma(config, rngs=nnx.Rngs(0))
  >>> model(jnp.array([[1, 2, 3]])).shape
  (1, 3, 11)
  >>> model.blocks[0].attn.kv_einsum.kernel.shape
  (2, 2, 8, 2)
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

# Gemma's attention mask value: a large negative that stays finite in float32.
_MASK_VALUE = -2.3819763e38


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Static shape of a :class:`Gemma` model.

  Attributes:
    vocab_size: number of token ids.
    width: residual stream (embedding) width.
    depth: number of blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (divides ``num_heads``).
    head_dim: width of one head.
    mlp_dim: hidden width of the gated MLP.
    rope_max_wavelength: the longest wavelength of the rotary embedding.

  Example:
    >>> GemmaConfig(vocab_size=64, width=32, depth=2, num_heads=6, num_kv_heads=3, head_dim=8,
    ...             mlp_dim=40).num_groups
    2
  """
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_max_wavelength: int = 10_000

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                       f"{self.num_kv_heads}.")
    if self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}.")

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: int = 10_000) -> jax.Array:
  """Rotates (batch, length, heads, head_dim) ``x`` by its (batch, length) ``positions``.

  The two halves of the head dimension are the two coordinates of ``head_dim / 2`` rotations
  with wavelengths from ``2 pi`` to ``2 pi * max_wavelength`` (Gemma's layout).

  Example:
    >>> x = jnp.ones((1, 2, 1, 2))
    >>> apply_rope(x, jnp.array([[0, 0]])).tolist() == x.tolist()  # position 0: no rotation
    True
  """
  head_dim = x.shape[-1]
  fraction = 2 * jnp.arange(head_dim // 2) / head_dim
  timescale = max_wavelength ** fraction
  angle = positions[..., None] / timescale
  sin, cos = jnp.sin(angle)[..., None, :], jnp.cos(angle)[..., None, :]
  first, second = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin],
                         axis=-1).astype(x.dtype)


class RMSNorm(nnx.Module):
  """``x / rms(x) * (1 + scale)`` over the last axis, ``scale`` initialized to zeros."""

  def __init__(self, width: int, *, epsilon: float = 1e-6):
    self.scale = nnx.Param(jnp.zeros((width,)))
    self.epsilon = epsilon

  def __call__(self, x: jax.Array) -> jax.Array:
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + self.epsilon) * (1 + self.scale)


class Attention(nnx.Module):
  """Causal grouped-query self-attention with RoPE (see the module docstring)."""

  def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
    c = config
    self.num_kv_heads, self.max_wavelength = c.num_kv_heads, c.rope_max_wavelength
    self.q_einsum = nnx.Einsum("BTD,NDH->BTNH", (c.num_heads, c.width, c.head_dim), rngs=rngs)
    self.kv_einsum = nnx.Einsum("BSD,CKDH->CBSKH", (2, c.num_kv_heads, c.width, c.head_dim),
                                rngs=rngs)
    self.attn_vec_einsum = nnx.Einsum("BTNH,NHD->BTD", (c.num_heads, c.head_dim, c.width),
                                      rngs=rngs)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    q = self.q_einsum(x)
    k, v = self.kv_einsum(x)
    q = apply_rope(q, positions, self.max_wavelength)
    k = apply_rope(k, positions, self.max_wavelength)
    b, t, n, h = q.shape
    q = q.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h) * h ** -0.5
    logits = jnp.einsum("BTKGH,BSKH->BTKGS", q, k)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    logits = jnp.where(causal[None, :, None, None, :], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    encoded = jnp.einsum("BTKGS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
    return self.attn_vec_einsum(encoded)


class FeedForward(nnx.Module):
  """Gated MLP: ``linear(gelu(x @ W_gate) * (x @ W_up))``, ``W_gate, W_up`` stacked."""

  def __init__(self, width: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.gating_einsum = nnx.Einsum("BTD,CDF->CBTF", (2, width, mlp_dim), rngs=rngs)
    self.linear = nnx.Einsum("BTF,FD->BTD", (mlp_dim, width), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate, up = self.gating_einsum(x)
    return self.linear(jax.nn.gelu(gate) * up)


class Block(nnx.Module):
  """``x + attn(pre_attention_norm(x))``, then ``x + mlp(pre_ffw_norm(x))``."""

  def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
    self.pre_attention_norm = RMSNorm(config.width)
    self.attn = Attention(config, rngs=rngs)
    self.pre_ffw_norm = RMSNorm(config.width)
    self.mlp = FeedForward(config.width, config.mlp_dim, rngs=rngs)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    x = x + self.attn(self.pre_attention_norm(x), positions)
    return x + self.mlp(self.pre_ffw_norm(x))


class Gemma(nnx.Module):
  """Token ids (batch, length) to next-token logits (batch, length, vocab_size).

  Args:
    config: the :class:`GemmaConfig`.
    rngs: NNX random streams.
  """

  def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
    self.config = config
    init = nnx.initializers.normal(config.width ** -0.5)  # unit rows after the sqrt(width)
    self.embedder = nnx.Embed(config.vocab_size, config.width, embedding_init=init, rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
    self.final_norm = RMSNorm(config.width)

  def __call__(self, ids: jax.Array) -> jax.Array:
    x = self.embedder(ids)
    x = x * jnp.sqrt(self.config.width).astype(x.dtype)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    for block in self.blocks:
      x = block(x, positions)
    return self.embedder.attend(self.final_norm(x))
