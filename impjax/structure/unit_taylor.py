"""Label-free unit importance of any model: AMP's entropy-Taylor over the discovered groups.

Each MLP unit and attention head of a :class:`~impjax.structure.Structure` gets a gate per
example, fixed at 1, on what it passes on: the gate scales the unit's entries in the kernels
that read it (the rows of ``W_out`` a hidden unit feeds, a head's slice of the output
projection), which is the same as gating the unit's activation. The model runs once per
example (``jax.vmap`` over the batch axis 0 of every input) so each example has its own gates;
the score of a unit is the mean over examples of ``|dL/dgate|`` with ``L`` the entropy of
``softmax(t * cos(z_i, z_j))`` between the batch's outputs ``z`` (no labels), averaged over
calibration batches. ``fn`` names the output: any ``fn(params, *inputs) -> (batch, dim)``, e.g.
a sentence embedding, pooled hidden states or logits.

Reference: Adaptive MLP Pruning (AMP; label-free entropy loss, gate Taylor scores); Michel et
al. 2019 (head gates); Molchanov et al. 2019 (group Taylor importance).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import structure
  >>> params = {"w1": jnp.array([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]]),
  ...           "w2": jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
  >>> fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
  >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  >>> s = structure.discover(fn, params, x)
  >>> scores = structure.entropy_taylor_scores(fn, params, s, [(x,)], progress=False)
  >>> scores["hidden:w1"].shape
  (3,)
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from impjax import groups
from impjax import tree_utils
from impjax.groups.coupled import member_values
from impjax.scores import heads
from impjax.structure.discovery import Structure


def _readers(s: Structure, coupled: groups.Coupled) -> list[groups.Member]:
  """The members of a group that read its units: kernels whose unit axis they contract."""
  out = [m for m in groups.members(coupled) if m.path in s.kernels
         and m.axis in s.kernels[m.path].contraction]
  if not out:
    raise ValueError(f"No kernel of the group {[m.path for m in groups.members(coupled)]} "
                     "reads its units; it cannot be gated.")
  return out


def gated(s: Structure, params: tree_utils.Params, gates: dict[str, jax.Array],
          kinds: tuple[str, ...] = ()) -> tree_utils.Params:
  """``params`` with each unit's entries in the kernels that read it scaled by its gate
  (``gates[name]``: ``(units,)`` or ``(layers, units)`` per group of ``kinds``)."""
  coupled = s.prunable(*kinds)
  leaves = tree_utils.leaves_by_path(params)
  factors: dict[str, jax.Array] = {}
  for name, gate in gates.items():
    for m in _readers(s, coupled[name]):
      f = member_values(gate, m, np.shape(leaves[m.path]), groups.is_stacked(coupled[name]))
      factors[m.path] = f * factors[m.path] if m.path in factors else f
  return tree_utils.map_with_path(
      lambda path, w: w * factors[path].astype(w.dtype) if path in factors else w, params)


def entropy_taylor_scores(fn: Callable[..., jax.Array], params: tree_utils.Params,
                          s: Structure, batches: Iterable[tuple], *kinds: str,
                          temperature: float = 15.0, progress: bool = True
                          ) -> dict[str, jax.Array]:
  """``{group name: (units,) or (layers, units)}`` label-free unit importance, the mean over
  ``batches`` (tuples of ``fn``'s inputs, batch axis 0; weighted equally) of the mean over
  examples of ``|dL/dgate|``.

  Args:
    fn: ``fn(params, *inputs) -> (batch, dim)``, the output the entropy is taken of; it must
      treat examples independently (eval mode: no batch statistics).
    params: the params.
    s: the model's :class:`~impjax.structure.Structure`.
    batches: calibration batches, each a tuple of ``fn``'s inputs.
    *kinds: group kinds scored (default MLP units and heads).
    temperature: the softmax scale of the entropy loss (15 in AMP).
    progress: show a progress bar.
  """
  coupled = s.prunable(*kinds)
  if not coupled:
    raise ValueError(f"The structure has no exact groups of kinds {kinds or ('hidden', 'heads')}.")
  for group in coupled.values():
    _readers(s, group)
  shapes = {name: groups.keep_shape(tree_utils.leaves_by_path(params), c)
            for name, c in coupled.items()}

  @jax.jit
  def batch_scores(params, inputs):
    rows = inputs[0].shape[0]
    gates = {name: jnp.ones((rows,) + shape, jnp.float32) for name, shape in shapes.items()}

    def one(example, gate):
      return fn(gated(s, params, gate, kinds), *(x[None] for x in example))[0]

    loss = lambda g: heads.entropy_loss(jax.vmap(one)(inputs, g), temperature)
    return heads.gate_importance(jax.grad(loss)(gates))

  total, count = None, 0
  for inputs in tqdm(batches, desc="entropy-Taylor", disable=not progress):
    got = batch_scores(params, tuple(inputs))
    total = got if total is None else jax.tree.map(jnp.add, total, got)
    count += 1
  if total is None:
    raise ValueError("entropy_taylor_scores got no batches.")
  return jax.tree.map(lambda t: t / count, total)
