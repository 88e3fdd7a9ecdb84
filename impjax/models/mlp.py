"""A multilayer perceptron in Flax NNX (flattens its input).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax.models import MLP
  >>> model = MLP(64, (32,), 10, rngs=nnx.Rngs(0))
  >>> model(jnp.ones((2, 8, 8, 1))).shape
  (2, 10)
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp


class MLP(nnx.Module):
  """``Dense -> relu`` per hidden width, then a linear classifier head.

  Args:
    in_features: size of the flattened input.
    hidden: widths of the hidden layers.
    num_classes: output size.
    rngs: NNX random streams.
  """

  def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, *,
               rngs: nnx.Rngs):
    widths = (in_features,) + tuple(hidden)
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return self.head(x)


def num_params(model: nnx.Module) -> int:
  """Number of parameter values of an NNX module."""
  return sum(jnp.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
