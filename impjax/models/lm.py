"""A decoder-only language model in Flax Linen, laid out like the Flax ``lm1b`` example.

Tokens go through ``embed`` (``nn.Embed``), ``posembed`` adds a learned (``pos_embedding``
param) or fixed sinusoidal position embedding, ``depth`` pre-LayerNorm decoder blocks run
causal self-attention (``nn.MultiHeadDotProductAttention`` under ``nn.make_causal_mask``)
and a ``Dense -> relu -> Dense`` MLP, then
``decoder_norm``. Logits come from the shared embedding (``embed.attend``, scaled by
``1/sqrt(width)``) when ``logits_via_embedding``, else from a ``Dense`` named ``logits``.
Position ``t`` of the output predicts token ``t + 1``.

Reference: Vaswani et al. 2017, "Attention Is All You Need"; Radford et al. 2019, "Language
Models are Unsupervised Multitask Learners" (pre-LayerNorm decoder-only LM).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax.models import lm
  >>> config = lm.LMConfig(vocab_size=11, width=8, depth=1, num_heads=2, qkv_dim=6,
  ...                      mlp_dim=12, max_len=5, logits_via_embedding=True)
  >>> model = lm.TransformerLM(config)
  >>> ids = jnp.array([[1, 2, 3]])
  >>> params = model.init(jax.random.key(0), ids)["params"]
  >>> model.apply({"params": params}, ids).shape, sorted(params)
  ((1, 3, 11), ['decoder_norm', 'decoderblock_0', 'embed', 'posembed'])
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Static shape of a :class:`TransformerLM`.

  Attributes:
    vocab_size: number of token ids.
    width: residual stream (embedding) width.
    depth: number of decoder blocks.
    num_heads: attention heads.
    qkv_dim: total query/key/value width, ``num_heads * head_dim``.
    mlp_dim: hidden width of each block's MLP.
    max_len: longest sequence (size of the position table).
    posemb: ``"learned"`` (a ``pos_embedding`` parameter) or ``"sinusoidal"`` (fixed).
    logits_via_embedding: tie the output projection to the token embedding.

  Example:
    >>> LMConfig(vocab_size=50, width=24, depth=2, num_heads=3, qkv_dim=18, mlp_dim=40,
    ...          max_len=16).posemb
    'learned'
  """
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  qkv_dim: int
  mlp_dim: int
  max_len: int
  posemb: str = "learned"
  logits_via_embedding: bool = False

  def __post_init__(self):
    if self.posemb not in ("learned", "sinusoidal"):
      raise ValueError(f"posemb must be 'learned' or 'sinusoidal', got {self.posemb!r}.")
    if self.qkv_dim % self.num_heads:
      raise ValueError(f"qkv_dim {self.qkv_dim} is not a multiple of num_heads "
                       f"{self.num_heads}.")


def sinusoidal_table(max_len: int, width: int) -> np.ndarray:
  """The (1, max_len, width) sine/cosine position table of Vaswani et al. 2017.

  Example:
    >>> sinusoidal_table(3, 4)[0, 0].tolist()
    [0.0, 0.0, 1.0, 1.0]
  """
  half = width // 2
  angle = np.arange(max_len)[:, None] * np.exp(-np.log(10000.0) * np.arange(half) / half)
  table = np.zeros((max_len, width), np.float32)
  table[:, :half], table[:, half:2 * half] = np.sin(angle), np.cos(angle)
  return table[None]


class AddPositionEmbs(nn.Module):
  """Adds a learned or sinusoidal position embedding to (batch, length, width) inputs."""
  max_len: int
  posemb: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    length, width = x.shape[1], x.shape[2]
    if length > self.max_len:
      raise ValueError(f"Sequence length {length} exceeds max_len {self.max_len}.")
    if self.posemb == "learned":
      table = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                         (1, self.max_len, width))
    else:
      table = jnp.asarray(sinusoidal_table(self.max_len, width))
    return x + table[:, :length]


class MlpBlock(nn.Module):
  """``Dense(mlp_dim) -> relu -> Dense(width)``."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.relu(nn.Dense(self.mlp_dim)(x))
    return nn.Dense(width)(x)


class DecoderBlock(nn.Module):
  """``x + attn(LN(x), mask)``, then ``x + mlp(LN(x))``."""
  num_heads: int
  qkv_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.qkv_dim,
                                        use_bias=False)(y, mask=mask)
    x = x + y
    y = nn.LayerNorm()(x)
    return x + MlpBlock(mlp_dim=self.mlp_dim)(y)


class TransformerLM(nn.Module):
  """Causal decoder-only LM, set by ``config`` (an :class:`LMConfig`): ids (batch, length) to
  logits (batch, length, vocab_size)."""
  config: LMConfig

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    c = self.config
    embed = nn.Embed(c.vocab_size, c.width, embedding_init=nn.initializers.normal(1.0),
                     name="embed")
    x = embed(ids.astype(jnp.int32))
    x = AddPositionEmbs(max_len=c.max_len, posemb=c.posemb, name="posembed")(x)
    mask = nn.make_causal_mask(ids)
    for lyr in range(c.depth):
      x = DecoderBlock(num_heads=c.num_heads, qkv_dim=c.qkv_dim, mlp_dim=c.mlp_dim,
                       name=f"decoderblock_{lyr}")(x, mask)
    x = nn.LayerNorm(name="decoder_norm")(x)
    if c.logits_via_embedding:
      return embed.attend(x) / jnp.sqrt(x.shape[-1])
    return nn.Dense(c.vocab_size, name="logits")(x)
