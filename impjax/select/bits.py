"""Bit allocation over trees: choose a precision per unit (leaf or channel) under an
average-bit or byte budget, from a sensitivity table or an importance order.

A sensitivity table has one row per unit and one column per candidate precision (e.g. from
:func:`impjax.scores.hawq`); ``choices`` lists the candidates in increasing cost: integer bits
or float formats (``"float8_e4m3fn"``, ``"bfloat16"``: 8 and 16 bits). The solvers on flat
arrays (``knapsack``, ``greedy``, ``lowering``) are in :mod:`impjax.select.bit_solvers`;
:func:`allocate` and :func:`order_bits` run them on trees, returning a bits tree for
:func:`impjax.transforms.fake_quant`; :func:`layer_importance` spreads one score per layer
(e.g. block influence) over its units for :func:`order_bits`. :func:`salient_channels` picks
input channels to keep at higher precision (PTQ1.61).

References: Yao et al. 2021, "HAWQ-V3: Dyadic Neural Network Quantization"; Dong et al. 2020,
"HAWQ-V2"; Dumitru et al. 2024, "Layer-Wise Quantization: A Pragmatic and Effective Method
for Quantizing LLMs Beyond Integer Bit-Levels"; Zhao et al. 2024, "PTQ1.61".

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, select
  >>> params = {"a": jnp.ones(4), "b": jnp.ones(4)}
  >>> plan = groups.plan(params, [(".*", groups.leaf())])
  >>> table = {"a": jnp.array([[9.0, 1.0]]), "b": jnp.array([[1.0, 0.5]])}  # "a" suffers more
  >>> {k: int(v) for k, v in select.allocate(table, params, plan, (2, 4), avg_bits=3.0).items()}
  {'a': 4, 'b': 2}
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from impjax import groups
from impjax import tree_utils
from impjax.groups import granularity as gran
from impjax.select.bit_solvers import greedy
from impjax.select.bit_solvers import knapsack
from impjax.select.bit_solvers import lowering
from impjax.select.topk import topk

Choice = int | str


def bits_of(choice: Choice) -> int:
  """Storage bits of one choice: integer bits, or the width of a float format.

  Example:
    >>> bits_of(3), bits_of("bfloat16"), bits_of("float8_e4m3fn")
    (3, 16, 8)
  """
  if isinstance(choice, str):
    return jnp.dtype(choice).itemsize * 8
  return int(choice)


def _check_choices(choices: Sequence[Choice]) -> np.ndarray:
  costs = np.array([bits_of(c) for c in choices], np.int64)
  if len(costs) == 0 or np.any(np.diff(costs) <= 0):
    raise ValueError(f"choices must be non-empty and strictly increasing in bits, got "
                     f"{list(choices)}.")
  return costs


def _budget(costs: np.ndarray, sizes: np.ndarray, avg_bits: float | None,
            nbytes: int | None) -> int:
  """Bits available: ``avg_bits * sum(sizes)`` or ``8 * nbytes`` (exactly one given)."""
  if (avg_bits is None) == (nbytes is None):
    raise ValueError("Give exactly one budget: avg_bits or nbytes.")
  if costs.size == 0:
    raise ValueError("Nothing to allocate: the plan has no units.")
  budget = (math.floor(avg_bits * int(np.sum(sizes))) if avg_bits is not None
            else 8 * int(nbytes))
  cheapest = int(np.sum(costs[:, 0]))
  if budget < cheapest:
    raise ValueError(f"The budget ({budget} bits) is below the cheapest allocation "
                     f"({cheapest} bits, every unit at its lowest choice).")
  return budget


def unit_sizes(params: tree_utils.Params, the_plan: tree_utils.Plan) -> Any:
  """Weights per unit of every leaf: numpy int ``(num_units,)`` (empty for dense leaves).

  Example:
    >>> p = {"k": jnp.ones((3, 2))}
    >>> unit_sizes(p, groups.plan(p, [("k", groups.neurons(-1))]))["k"].tolist()
    [3, 3]
  """
  tree_utils.check_same_structure(the_plan, params, names=("plan", "params"), shapes=False)

  def leaf(g, x):
    count = groups.num_groups(np.shape(x), g)
    return np.full((count,), math.prod(np.shape(x)) // count if count else 0, np.int64)
  return jax.tree.map(leaf, the_plan, params)


def _flat_units(tree: Any, the_plan: tree_utils.Plan) -> tuple[list, Any]:
  """The non-dense leaves of a per-unit tree and the tree's definition."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, np.ndarray))
  plans = jax.tree.leaves(the_plan)
  if len(plans) != len(leaves):
    raise ValueError(f"Per-unit tree has {len(leaves)} leaves but the plan has {len(plans)}.")
  return leaves, treedef


def _split(values: jax.Array, sizes_leaves: list) -> list:
  out, start = [], 0
  for s in sizes_leaves:
    out.append(values[start:start + s.size])
    start += s.size
  return out


def to_bits(choice_index: Any, choices: Sequence[Choice], params: tree_utils.Params,
            the_plan: tree_utils.Plan) -> Any:
  """A bits tree for :func:`impjax.transforms.fake_quant` from per-unit choice indices.

  Leaf units give scalar bits, ``neurons(axis)`` units give bits shaped to broadcast along
  that axis (and along the layer axis of a leaf planned :func:`impjax.groups.per_layer`), dense
  leaves give ``None``. Float formats (strings) need concrete indices and
  whole-leaf units.

  Example:
    >>> p = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    >>> plan = groups.plan(p, [("k", groups.neurons(-1))])
    >>> bits = to_bits({"k": jnp.array([1, 0]), "b": jnp.zeros(0, int)}, (2, 4), p, plan)
    >>> bits["k"].tolist(), bits["b"]
    ([[4, 2]], None)
  """
  costs = _check_choices(choices)
  has_formats = any(isinstance(c, str) for c in choices)

  def leaf(path, g, x, idx):
    if g.kind == "dense":
      return None
    if has_formats:
      if g.kind != "leaf" or not tree_utils.is_concrete(idx):
        raise ValueError(f"Leaf '{path}': float-format choices need whole-leaf units and "
                         "concrete indices.")
      choice = choices[int(np.asarray(idx).reshape(-1)[0])]
      return choice if isinstance(choice, str) else int(choice)
    bits = jnp.asarray(costs, jnp.int32)[jnp.asarray(idx, jnp.int32)]
    if g.kind in ("leaf", "neurons"):
      # The unit axes in the leaf's order: the layer axis of a stacked leaf, the neuron axis.
      axes = ([g.layer_axis % np.ndim(x)] if g.layer_axis is not None else []) + (
          [g.axis % np.ndim(x)] if g.kind == "neurons" else [])
      if not axes:  # one value for the whole leaf
        return bits.reshape(())
      view = [1] * np.ndim(x)
      for a in axes:
        view[a] = np.shape(x)[a]
      grid = bits.reshape([np.shape(x)[a] for a in axes])
      return (grid.T if axes != sorted(axes) else grid).reshape(view)
    raise ValueError(f"Leaf '{path}': bit allocation supports leaf() and neurons() units, "
                     f"not {g.kind}.")
  return tree_utils.map_with_path(leaf, the_plan, params, choice_index,
                                  is_leaf=lambda v: isinstance(v, groups.Granularity))


def allocate(table: Any, params: tree_utils.Params, the_plan: tree_utils.Plan,
             choices: Sequence[Choice], *,
             avg_bits: float | None = None, nbytes: int | None = None,
             method: str = "knapsack") -> Any:
  """Bits per unit from a sensitivity table tree, under an average-bit or byte budget.

  Args:
    table: tree of ``(num_units, len(choices))`` sensitivities (e.g. :func:`scores.hawq`).
    params: the params (for unit sizes and shapes).
    the_plan: the units (:func:`impjax.groups.plan` with ``leaf()`` or ``neurons(axis)``).
    choices: candidate precisions in increasing bits.
    avg_bits: budget as average bits per planned weight (scales not counted).
    nbytes: budget as bytes of the planned weights.
    method: ``"knapsack"`` (exact) or ``"greedy"``.

  Returns:
    A bits tree for :func:`impjax.transforms.fake_quant` (``None`` for dense leaves).

  Example:
    >>> from impjax import groups
    >>> p = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((4, 4))}}
    >>> plan = groups.plan(p, [("kernel", groups.leaf())])
    >>> table = {"a": {"kernel": jnp.array([[8.0, 1.0]])}, "b": {"kernel": jnp.array([[2.0, 1.0]])}}
    >>> bits = allocate(table, p, plan, (2, 4), avg_bits=3)
    >>> int(bits["a"]["kernel"]), int(bits["b"]["kernel"])
    (4, 2)
  """
  if method not in ("knapsack", "greedy"):
    raise ValueError(f"method must be 'knapsack' or 'greedy', got {method!r}.")
  choice_bits = _check_choices(choices)
  tree_utils.check_same_structure(params, table, names=("params", "table"), shapes=False)
  sizes = unit_sizes(params, the_plan)
  size_leaves, treedef = _flat_units(sizes, the_plan)
  tables = jax.tree.leaves(table)
  for path, t, s in zip(tree_utils.path_names(params), tables, size_leaves):
    if np.shape(t) != (s.size, len(choices)):
      raise ValueError(f"table leaf '{path}' has shape {np.shape(t)}, expected "
                       f"{(s.size, len(choices))} (units, choices).")
  tree_utils.check_finite(table, what="sensitivity table")
  flat_sizes = np.concatenate(size_leaves)
  costs = flat_sizes[:, None] * choice_bits[None, :]
  budget = _budget(costs, flat_sizes, avg_bits, nbytes)
  solve = knapsack if method == "knapsack" else greedy
  chosen = solve(jnp.concatenate([jnp.asarray(t, jnp.float32) for t in tables]), costs, budget)
  indices = jax.tree.unflatten(treedef, _split(chosen, size_leaves))
  return to_bits(indices, choices, params, the_plan)


def order_bits(importance: tree_utils.Importance, params: tree_utils.Params,
               the_plan: tree_utils.Plan, low: int, high: int,
               avg_bits: float) -> Any:
  """Layer-Wise Quantization over a tree: :func:`lowering` of all units at once.

  Args:
    importance: tree of per-unit scores ``(num_units,)`` (higher = keep at ``high``), e.g.
      :func:`gain_per_bit`, or a grouped importance (:func:`impjax.groups.reduce`).
    params: the params.
    the_plan: the units.
    low: the lower bit-width.
    high: the higher bit-width.
    avg_bits: the target average bits per planned weight.

  Returns:
    A bits tree for :func:`impjax.transforms.fake_quant`.

  Example:
    >>> from impjax import groups
    >>> p = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((4, 4))}}
    >>> plan = groups.plan(p, [("kernel", groups.leaf())])
    >>> imp = {"a": {"kernel": jnp.array([2.0])}, "b": {"kernel": jnp.array([1.0])}}
    >>> bits = order_bits(imp, p, plan, 2, 4, 3.0)
    >>> int(bits["a"]["kernel"]), int(bits["b"]["kernel"])
    (4, 2)
  """
  tree_utils.check_same_structure(params, importance, names=("params", "importance"),
                                  shapes=False)
  sizes = unit_sizes(params, the_plan)
  size_leaves, treedef = _flat_units(sizes, the_plan)
  scores = jax.tree.leaves(importance)
  for path, s, n in zip(tree_utils.path_names(params), scores, size_leaves):
    if np.shape(s) != (n.size,):
      raise ValueError(f"importance leaf '{path}' has shape {np.shape(s)}, expected "
                       f"({n.size},) (one score per unit).")
  tree_utils.check_finite(importance, what="importance")
  chosen = lowering(jnp.concatenate([jnp.asarray(s, jnp.float32).reshape(-1) for s in scores]),
                    np.concatenate(size_leaves), low, high, avg_bits)
  indices = jax.tree.unflatten(treedef, _split(chosen, size_leaves))
  return to_bits(indices, (low, high), params, the_plan)


def layer_importance(layer_scores: Mapping[str, Any], params: tree_utils.Params,
                     the_plan: tree_utils.Plan) -> Any:
  """Per-unit importance from one score per layer: every unit of every planned leaf under a
  layer's path prefix gets that layer's score, for :func:`order_bits`.

  With Layer-Wise Quantization's block influence ``BI = 1 - cos(h_in, h_out)`` per layer
  (:func:`impjax.scores.block_influence_sums` then :func:`impjax.scores.means`, over
  calibration tokens), :func:`order_bits` keeps the most influential layers at ``high`` bits
  and lowers the others, least influential first (kernels of one layer tie: they drop in tree
  order). Scores may be traced.

  Args:
    layer_scores: ``{path prefix: scalar score}``, e.g. ``{"layers/0": 0.12, ...}``; a leaf
      belongs to the layer whose prefix its path equals or continues with ``/``.
    params: the params (for unit counts).
    the_plan: the units (:func:`impjax.groups.plan`); every planned leaf must belong to
      exactly one layer, and every layer must have a planned leaf.

  Returns:
    A tree like ``params`` of float32 ``(num_units,)`` scores (empty for dense leaves).

  Reference: Dumitru et al. 2024, "Layer-Wise Quantization: A Pragmatic and Effective Method
  for Quantizing LLMs Beyond Integer Bit-Levels" (block influence from Men et al. 2024,
  "ShortGPT").

  Example:
    >>> from impjax import groups
    >>> p = {"layers": [{"kernel": jnp.ones((4, 4))}, {"kernel": jnp.ones((4, 4))}]}
    >>> plan = groups.plan(p, [("kernel", groups.leaf())])
    >>> imp = layer_importance({"layers/0": 0.3, "layers/1": 0.1}, p, plan)  # e.g. BI
    >>> bits = order_bits(imp, p, plan, 2, 4, 3.0)
    >>> int(bits["layers"][0]["kernel"]), int(bits["layers"][1]["kernel"])
    (4, 2)
  """
  for prefix, score in layer_scores.items():
    if np.shape(score) != ():
      raise ValueError(f"layer_scores['{prefix}'] must be a scalar, got shape "
                       f"{np.shape(score)}.")
  used = set()

  def leaf(path, g, n):
    if g.kind == "dense":
      return jnp.zeros((0,), jnp.float32)
    owners = [p for p in layer_scores if path == p or path.startswith(p.rstrip("/") + "/")]
    if len(owners) != 1:
      raise ValueError(f"Leaf '{path}' belongs to {len(owners)} layers of layer_scores "
                       f"({owners}); each planned leaf needs exactly one.")
    used.add(owners[0])
    return jnp.full((n.size,), layer_scores[owners[0]], jnp.float32)
  out = tree_utils.map_with_path(leaf, the_plan, unit_sizes(params, the_plan),
                                 is_leaf=lambda v: isinstance(v, groups.Granularity))
  unused = sorted(set(layer_scores) - used)
  if unused:
    raise ValueError(f"layer_scores has layers with no planned leaf: {unused}.")
  return out


def gain_per_bit(table: Any, params: tree_utils.Params, the_plan: tree_utils.Plan,
                 choices: Sequence[Choice],
                 low: Choice, high: Choice) -> Any:
  """Sensitivity removed per weight-bit by raising each unit from ``low`` to ``high``:
  ``(table[:, low] - table[:, high]) / (size * (bits(high) - bits(low)))`` — the order in
  which greedy allocation spends bits, as an importance for :func:`order_bits`.

  Example:
    >>> from impjax import groups
    >>> p = {"k": jnp.ones((2, 2))}
    >>> plan = groups.plan(p, [("k", groups.neurons(-1))])
    >>> gain_per_bit({"k": jnp.array([[5.0, 1.0], [3.0, 2.0]])}, p, plan, (2, 4), 2, 4)["k"].tolist()
    [1.0, 0.25]
  """
  choices = list(choices)
  lo, hi = choices.index(low), choices.index(high)
  extra = bits_of(high) - bits_of(low)
  if extra <= 0:
    raise ValueError(f"high ({high}) must have more bits than low ({low}).")
  return jax.tree.map(lambda t, n: (t[:, lo] - t[:, hi]) / (jnp.asarray(n, jnp.float32) * extra),
                      table, unit_sizes(params, the_plan))


def average_bits(bits: Any, params: tree_utils.Params, salient: Any = None,
                 salient_bits: int = 8) -> float:
  """Average bits per weight over the leaves with integer bits (concrete values only).

  With ``salient`` masks (:func:`salient_channels`), salient weights count ``salient_bits``.

  Example:
    >>> p = {"a": jnp.ones((2, 2)), "b": jnp.ones(6)}
    >>> average_bits({"a": jnp.array([[2, 4]]), "b": None}, p)
    3.0
  """
  total = count = 0.0
  salient = jax.tree.map(lambda _: None, params) if salient is None else salient
  for b, x, s in zip(jax.tree.leaves(bits, is_leaf=lambda v: v is None), jax.tree.leaves(params),
                     jax.tree.leaves(salient, is_leaf=lambda v: v is None)):
    if b is None or isinstance(b, str):
      continue
    per_weight = np.broadcast_to(np.asarray(b, np.float64), np.shape(x))
    if s is not None:
      per_weight = np.where(np.broadcast_to(np.asarray(s), np.shape(x)), salient_bits,
                            per_weight)
    total += float(per_weight.sum())
    count += per_weight.size
  return total / count if count else 0.0


def salient_channels(importance: tree_utils.Importance, the_plan: tree_utils.Plan, fraction: float,
                     axis: int = -2) -> Any:
  """PTQ1.61-style masks of the top ``fraction`` of input channels of every planned leaf.

  Channel scores are the sum of ``importance`` over all other axes (e.g. importance
  ``|W|^2 * E[x^2]`` ranks input channels by their share of the output); the exact top-k is
  :func:`impjax.select.topk` per leaf.

  Args:
    importance: element importance like the params.
    the_plan: which leaves are quantized (dense leaves give ``None``).
    fraction: share of channels kept salient, in [0, 1].
    axis: the channel axis (``-2``: inputs of Dense and Conv kernels).

  Returns:
    A tree of bool masks shaped to broadcast along ``axis`` (``None`` for dense leaves).

  Example:
    >>> from impjax import groups
    >>> imp = {"k": jnp.array([[1.0, 1.0], [9.0, 0.0], [2.0, 2.0], [0.0, 0.1]])}
    >>> plan = groups.plan(imp, [("k", groups.element())])
    >>> salient_channels(imp, plan, 0.25)["k"].ravel().tolist()
    [False, True, False, False]
  """
  tree_utils.check_fraction(fraction, what="fraction")
  channel = groups.neurons(axis)

  def leaf(path, g, s):
    if g.kind == "dense":
      return jnp.zeros((0,), jnp.float32)
    gran.check_leaf(np.shape(s), channel, path)
    return groups.reduce_leaf(s.astype(jnp.float32), channel, "sum")
  per_channel = tree_utils.map_with_path(leaf, the_plan, importance,
                                         is_leaf=lambda v: isinstance(v, groups.Granularity))
  keep = topk(per_channel, 1.0 - fraction, scope="local")

  def expand(g, s, m):
    if g.kind == "dense":
      return None
    view = [1] * np.ndim(s)
    view[axis % np.ndim(s)] = np.shape(s)[axis]
    return m.reshape(view)
  return jax.tree.map(expand, the_plan, importance, keep,
                      is_leaf=lambda v: isinstance(v, groups.Granularity))
