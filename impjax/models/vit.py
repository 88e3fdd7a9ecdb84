"""A Vision Transformer in Flax Linen, laid out like big_vision's ``vit.py``.

``embedding`` (a conv with kernel = stride = patch) cuts the image into patch tokens, a
learned ``pos_embedding`` is added, a ``cls`` token is prepended (``pool_type="tok"``), then
``Transformer`` runs ``depth`` pre-LayerNorm blocks (``nn.MultiHeadDotProductAttention``, whose
q/k/v kernels are (width, heads, head_dim) and whose out kernel is (heads, head_dim, width),
and a ``Dense -> gelu -> Dense`` MLP), ends with ``encoder_norm``, and ``head`` classifies
the pooled token. With ``scan=True`` the blocks are one ``nn.scan`` over ``nn.remat`` (as
big_vision scans them), so every block parameter is stacked along a leading ``depth`` axis
under ``Transformer/encoderblock``; otherwise block ``i`` is ``Transformer/encoderblock_i``.

Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale".

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax.models import vit
  >>> config = vit.ViTConfig(num_classes=5, patch=4, width=8, depth=2, mlp_dim=12,
  ...                        num_heads=2, scan=True)
  >>> model = vit.ViT(config)
  >>> images = jnp.ones((1, 8, 8, 3))
  >>> params = model.init(jax.random.key(0), images)["params"]
  >>> model.apply({"params": params}, images).shape
  (1, 5)
  >>> params["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape
  (2, 8, 12)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Static shape of a ViT.

  Attributes:
    num_classes: output size of the ``head``.
    patch: patch height and width (the stem conv's kernel and stride).
    width: token width.
    depth: number of encoder blocks.
    mlp_dim: hidden width of each block's MLP.
    num_heads: attention heads (``width`` must be a multiple).
    scan: stack the blocks with ``nn.scan`` (parameters get a leading ``depth`` axis).
    pool_type: ``"tok"`` (classify a prepended ``cls`` token) or ``"gap"`` (mean over tokens).

  Example:
    >>> ViTConfig(num_classes=10, patch=4, width=24, depth=2, mlp_dim=40, num_heads=3).pool_type
    'tok'
  """
  num_classes: int
  patch: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  scan: bool = False
  pool_type: str = "tok"

  def __post_init__(self):
    if self.pool_type not in ("tok", "gap"):
      raise ValueError(f"pool_type must be 'tok' or 'gap', got {self.pool_type!r}.")
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}.")


class MlpBlock(nn.Module):
  """``Dense(mlp_dim) -> gelu -> Dense(width)``."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim)(x)
    x = nn.gelu(x)
    return nn.Dense(width)(x)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``.

  Returns ``(x, None)`` so that the same module is the body of an ``nn.scan``.
  """
  mlp_dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, _=None) -> tuple[jax.Array, None]:
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
    x = x + y
    y = nn.LayerNorm()(x)
    y = MlpBlock(mlp_dim=self.mlp_dim)(y)
    return x + y, None


class Encoder(nn.Module):
  """``depth`` :class:`Encoder1DBlock`\\ s (looped or scanned), then ``encoder_norm``."""
  depth: int
  mlp_dim: int
  num_heads: int
  scan: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.scan:
      block = nn.remat(Encoder1DBlock, prevent_cse=False)
      x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=self.depth)(
                         name="encoderblock", mlp_dim=self.mlp_dim, num_heads=self.num_heads)(
                             x, None)
    else:
      for lyr in range(self.depth):
        x, _ = Encoder1DBlock(name=f"encoderblock_{lyr}", mlp_dim=self.mlp_dim,
                              num_heads=self.num_heads)(x)
    return nn.LayerNorm(name="encoder_norm")(x)


class ViT(nn.Module):
  """Patch embedding, position embedding, encoder, pooling and a linear ``head``.

  Attributes:
    config: the :class:`ViTConfig`.
  """
  config: ViTConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """Logits (batch, num_classes) of NHWC ``images``."""
    c = self.config
    x = nn.Conv(c.width, (c.patch, c.patch), strides=(c.patch, c.patch), padding="VALID",
                name="embedding")(images)
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    x = x + self.param("pos_embedding", nn.initializers.normal(stddev=d ** -0.5),
                       (1, h * w, d), x.dtype)
    if c.pool_type == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, d), x.dtype)
      x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
    x = Encoder(depth=c.depth, mlp_dim=c.mlp_dim, num_heads=c.num_heads, scan=c.scan,
                name="Transformer")(x)
    x = x[:, 0] if c.pool_type == "tok" else jnp.mean(x, axis=1)
    return nn.Dense(c.num_classes, name="head")(x)
