"""A small convolutional classifier in Flax NNX for small images such as 8x8 digits.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax.models import CNN
  >>> CNN(1, (16, 32), 64, 10, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1))).shape
  (2, 10)
"""

from __future__ import annotations

from flax import nnx
import jax


class CNN(nnx.Module):
  """``3x3 conv -> relu`` per channel width, 2x2 average pooling, a dense layer and a head.

  Args:
    in_channels: input channels.
    channels: output channels of each 3x3 convolution (SAME padding).
    dense: width of the dense layer after pooling.
    num_classes: output size.
    image_size: input height and width.
    rngs: NNX random streams.
  """

  def __init__(self, in_channels: int, channels: tuple[int, ...], dense: int, num_classes: int,
               *, image_size: int = 8, rngs: nnx.Rngs):
    widths = (in_channels,) + tuple(channels)
    self.convs = nnx.List([nnx.Conv(a, b, kernel_size=(3, 3), padding="SAME", rngs=rngs)
                           for a, b in zip(widths, widths[1:])])
    pooled = (image_size // 2) ** 2 * widths[-1]
    self.dense = nnx.Linear(pooled, dense, rngs=rngs)
    self.head = nnx.Linear(dense, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.head(x)
