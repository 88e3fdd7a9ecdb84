"""Defaults from the structure: which kernels are pruned, along which axes.

:func:`rules` turns a :class:`Structure` into path rules for every stage that takes them
(:func:`impjax.groups.plan`, :func:`impjax.transforms.prune`, ...): every kernel a
``dot_general`` or convolution consumes is planned at the asked granularity, N:M groups run
along its discovered contraction axis and neurons along its output axis; the layers that read
the model's input or write its output (stems, classifiers, logit projections), embeddings,
biases and norms stay dense unless asked. :func:`channel_axes` gives each kernel's output axes,
for one quantization scale per output channel, and :func:`schemes` a quantization scheme per
leaf with those axes.

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

import dataclasses
import re
from typing import Any

import numpy as np

from impjax import groups
from impjax import tree_utils
from impjax.quantization import numerics
from impjax.structure.discovery import KernelAxes
from impjax.structure.discovery import Structure


def pruned_by_default(k: KernelAxes, dense_io: bool = True) -> bool:
  """Whether the defaults prune kernel ``k``: not an embedding and, with ``dense_io``, neither
  reading the model's input nor writing its output."""
  return k.kind != "embedding" and not (dense_io and (k.reads_input or k.writes_output))


def rules(s: Structure, params: tree_utils.Params,
          granularity: groups.Granularity = groups.element(), *,
          dense_io: bool = True) -> list[tuple[str, groups.Granularity]]:
  """Anchored path rules, one per prunable kernel of ``s``.

  Args:
    s: the model's :class:`Structure`.
    params: the params (for the axis sizes N:M must divide).
    granularity: ``element()``, ``n_of_m(n, m)`` (its axis is replaced by the kernel's
      last contraction axis that ``m`` divides; a kernel with none stays dense), ``neurons()``
      (replaced by the last output axis) or ``blocks`` / ``leaf`` as given. A stacked
      (scanned) kernel gets it per layer (:func:`impjax.groups.per_layer` on its layer axis):
      its own floor, budget and report line per layer.
    dense_io: keep the layers that read the model's input or write its output dense.

  Returns:
    ``[(pattern, granularity)]`` for :func:`impjax.groups.plan`; unmatched leaves stay dense.
  """
  leaves = tree_utils.leaves_by_path(params)
  out = []
  for path, k in s.kernels.items():
    if not pruned_by_default(k, dense_io):
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
    if k.layer is not None and g.kind != "n_of_m":
      g = groups.per_layer(g, k.layer)
    out.append(("^" + re.escape(path) + "$", g))
  return out


def channel_axes(s: Structure) -> dict[str, tuple[int, ...]]:
  """``{kernel path: axes}``: the axes that keep their own quantization scale, each kernel's
  output axes and, for a stacked kernel, its layer axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> s = structure.discover(lambda p, x: x @ p["w"], {"w": jnp.ones((4, 3))}, jnp.ones((1, 4)))
    >>> channel_axes(s)
    {'w': (1,)}
  """
  return {path: tuple(sorted(k.output + (() if k.layer is None else (k.layer,))))
          for path, k in s.kernels.items() if k.kind != "embedding"}


def schemes(s: Structure, params: tree_utils.Params,
            base: numerics.Scheme = numerics.Scheme()) -> Any:
  """A tree like ``params`` of quantization schemes: ``base`` with one scale per output
  channel (per layer of a stacked kernel) for every kernel (:func:`channel_axes`), scale
  groups of ``base.group_size`` along the kernel's last contraction axis, and ``base`` as
  given elsewhere. For :func:`impjax.transforms.fake_quant`, :func:`impjax.transforms.quantized`,
  :func:`impjax.quantization.export` and the sensitivity tables.

  Example:
    >>> import jax.numpy as jnp
    >>> from impjax import structure
    >>> params = {"q": jnp.ones((4, 2, 3))}  # (width, heads, head_dim)
    >>> s = structure.discover(lambda p, x: jnp.einsum("bd,dnh->bnh", x, p["q"]), params,
    ...                        jnp.ones((1, 4)))
    >>> structure.schemes(s, params)["q"].channel_axes
    (1, 2)
  """
  axes = channel_axes(s)

  def leaf(path, _):
    if path not in axes:
      return base
    k = s.kernels[path]
    group_axis = k.contraction[-1] if k.contraction else base.group_axis
    return dataclasses.replace(base, channel_axes=axes[path], group_axis=group_axis)
  return tree_utils.map_with_path(leaf, params)
