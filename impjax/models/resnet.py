"""A ResNet with basic blocks in Flax Linen, laid out like the Flax ImageNet example.

``conv_init`` (no bias) + ``bn_init`` + relu (+ a 3x3 stride-2 max pool), then stages of
:class:`BasicBlock` (``conv3x3-BN-relu-conv3x3-BN`` plus the input, projected by a 1x1
``conv_proj`` + ``norm_proj`` where the stride or channels change, then relu; stage ``i`` has
``num_filters * 2**i`` channels and halves the resolution in its first block for ``i > 0``),
a global average pool and a ``Dense`` ``head``. ``BatchNorm`` uses its running averages
(``batch_stats``) unless ``train``, when it normalizes by the batch and updates them.

Reference: He et al. 2016, "Deep Residual Learning for Image Recognition".

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax.models import resnet
  >>> config = resnet.ResNetConfig(stage_sizes=(1, 1), num_filters=4, num_classes=3)
  >>> model = resnet.ResNet(config)
  >>> images = jnp.ones((1, 16, 16, 3))
  >>> variables = model.init(jax.random.key(0), images)
  >>> sorted(variables), model.apply(variables, images).shape
  (['batch_stats', 'params'], (1, 3))
  >>> _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  >>> sorted(updates), variables["params"]["BasicBlock_1"]["conv_proj"]["kernel"].shape
  (['batch_stats'], (1, 1, 4, 8))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Static shape of a :class:`ResNet`.

  Attributes:
    stage_sizes: number of blocks in each stage (ResNet-18: ``(2, 2, 2, 2)``).
    num_filters: channels of the stem and the first stage (doubled at every stage).
    num_classes: output size of the ``head``.
    stem_kernel: kernel size of the stem conv (7 for ImageNet, 3 for small images).
    stem_stride: stride of the stem conv.
    stem_pool: follow the stem by a 3x3 stride-2 max pool.

  Example:
    >>> ResNetConfig(stage_sizes=(2, 2, 2, 2), num_filters=64, num_classes=1000).stem_kernel
    7
  """
  stage_sizes: tuple[int, ...]
  num_filters: int
  num_classes: int
  stem_kernel: int = 7
  stem_stride: int = 2
  stem_pool: bool = True


class BasicBlock(nn.Module):
  """``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))``."""
  filters: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """Stem, stages of :class:`BasicBlock`, global average pool and a linear ``head``.

  Attributes:
    config: the :class:`ResNetConfig`.
  """
  config: ResNetConfig

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Logits (batch, num_classes) of NHWC ``images``."""
    c = self.config
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5)
    x = conv(c.num_filters, (c.stem_kernel, c.stem_kernel), (c.stem_stride, c.stem_stride),
             name="conv_init")(images)
    x = nn.relu(norm(name="bn_init")(x))
    if c.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, block_size in enumerate(c.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = BasicBlock(c.num_filters * 2 ** i, conv=conv, norm=norm, strides=strides)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(c.num_classes, name="head")(x)
