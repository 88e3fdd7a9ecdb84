"""A residual MLP in Flax NNX whose blocks are one stacked layer (Flax's scan-over-layers layout).

``embed -> depth x [h + down(relu(up(norm(h))))] -> norm -> head``. Every block has the same
shapes and its parameters are stored stacked along a leading ``depth`` axis
(``params["blocks"]["up"]["kernel"]`` is ``(depth, width, hidden)``), so layer transforms can
gather, scatter, skip or sample blocks by index under ``jit`` (:mod:`impjax.transforms`).

Reference: He et al. 2016, "Identity Mappings in Deep Residual Networks" (pre-norm residual
blocks, each of which can be skipped and leaves a valid network).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax.models import ResidualMLP
  >>> model = ResidualMLP(64, 32, 64, 4, 10, rngs=nnx.Rngs(0))
  >>> model(jnp.ones((2, 8, 8, 1))).shape, model.blocks.up.kernel.shape
  ((2, 10), (4, 32, 64))
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax


class ResidualBlock(nnx.Module):
  """``h + down(relu(up(norm(h))))``."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, hidden, rngs=rngs)
    self.down = nnx.Linear(hidden, width, rngs=rngs)

  def __call__(self, h: jax.Array) -> jax.Array:
    return h + self.down(jax.nn.relu(self.up(self.norm(h))))


class ResidualMLP(nnx.Module):
  """A flattening input projection, ``depth`` stacked residual blocks, a norm and a head.

  Args:
    in_features: size of the flattened input.
    width: residual stream width.
    hidden: hidden width inside each block.
    depth: number of blocks.
    num_classes: output size.
    rngs: NNX random streams.
  """

  def __init__(self, in_features: int, width: int, hidden: int, depth: int, num_classes: int,
               *, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f"ResidualMLP needs depth >= 1, got {depth}.")
    self.embed = nnx.Linear(in_features, width, rngs=rngs)

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs):
      return ResidualBlock(width, hidden, rngs=rngs)

    self.blocks = blocks(rngs)
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array,
               run: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """Logits of ``x``; ``run(h)``, when given, replaces the pass through the blocks."""
    h = self.embed(x.reshape(x.shape[0], -1))
    if run is None:
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def through(h, block):
        return block(h)
      h = through(h, self.blocks)
    else:
      h = run(h)
    return self.head(self.norm(h))


def block_fn(model: ResidualMLP) -> Callable[[Any, jax.Array], jax.Array]:
  """The pure ``(block_params, h) -> h`` of one block (``block_params`` unstacked).

  Example:
    >>> import jax.numpy as jnp
    >>> model = ResidualMLP(4, 8, 16, 2, 3, rngs=nnx.Rngs(0))
    >>> one = jax.tree.map(lambda a: a[0], nnx.to_pure_dict(nnx.state(model.blocks)))
    >>> block_fn(model)(one, jnp.ones((5, 8))).shape
    (5, 8)
  """
  graphdef = nnx.graphdef(model.blocks)
  return lambda params, h: nnx.merge(graphdef, params)(h)
