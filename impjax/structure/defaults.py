"""Defaults from the structure: which kernels are pruned, along which axes.

:func:`rules` turns a :class:`Structure` into path rules for every stage that takes them
(:func:`impjax.groups.plan`, :func:`impjax.transforms.prune`, ...): every kernel a
``dot_general`` or convolution consumes is planned at the asked granularity, N:M groups run
along its discovered contraction axis and neurons along its output axis; the layers that read
the model's input or write its output (stems, classifiers, logit projections), embeddings,
biases and norms stay dense unless asked. :func:`channel_axes` gives each kernel's output axes,
for one quantization scale per output channel.

Reference: Zhou et al. 2021 (N:M along the input dimension); Evci et al. 2020 and Frantar &
Alistarh 2023 keep the first and last layers dense.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, structure
  >>> params = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 8)), "w3": jnp.ones((8, 2))}
  >>> fn = lambda p, x: x @ p["w1"] @ p["w2"] @ p["w3"]
  >>> s = structure.discover(fn, params, jnp.ones((1, 4)))
  >>> plan = groups.plan(params, structure.rules(s, params, groups.n_of_m(2, 4)))
  >>> [(k, g.kind, g.axis) for k, g in plan.items()]
  [('w1', 'dense', -1), ('w2', 'n_of_m', 0), ('w3', 'dense', -1)]
"""

from __future__ import annotations

import re

import numpy as np

from impjax import groups
from impjax import tree_utils
from impjax.structure.discovery import Structure


def rules(s: Structure, params: tree_utils.Params,
          granularity: groups.Granularity = groups.element(), *,
          dense_io: bool = True) -> list[tuple[str, groups.Granularity]]:
  """Anchored path rules, one per prunable kernel of ``s``.

  Args:
    s: the model's :class:`Structure`.
    params: the params (for the axis sizes N:M must divide).
    granularity: ``element()``, ``n_of_m(n, m)`` (its axis is replaced by the kernel's
      last contraction axis that ``m`` divides; a kernel with none stays dense), ``neurons()``
      (replaced by the last output axis) or ``blocks`` / ``leaf`` as given.
    dense_io: keep the layers that read the model's input or write its output dense.

  Returns:
    ``[(pattern, granularity)]`` for :func:`impjax.groups.plan`; unmatched leaves stay dense.
  """
  leaves = tree_utils.leaves_by_path(params)
  out = []
  for path, k in s.kernels.items():
    if k.kind == "embedding" or (dense_io and (k.reads_input or k.writes_output)):
      continue
    g = granularity
    if g.kind == "n_of_m":
      shape = np.shape(leaves[path])
      axes = [a for a in k.contraction if shape[a] % g.m == 0]
      if not axes:
        continue
      g = groups.n_of_m(g.n, g.m, axis=axes[-1])
    elif g.kind == "neurons":
      g = groups.neurons(k.output[-1])
    out.append(("^" + re.escape(path) + "$", g))
  return out


def channel_axes(s: Structure) -> dict[str, tuple[int, ...]]:
  """``{kernel path: output axes}``: the axes that keep their own quantization scale.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> s = structure.discover(lambda p, x: x @ p["w"], {"w": jnp.ones((4, 3))}, jnp.ones((1, 4)))
    >>> channel_axes(s)
    {'w': (1,)}
  """
  return {path: k.output for path, k in s.kernels.items() if k.kind != "embedding"}
