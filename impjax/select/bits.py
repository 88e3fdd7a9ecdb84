"""Bit allocation: choose a precision per unit (leaf or channel) under an average-bit or byte
budget, from a sensitivity table or an importance order.

A sensitivity table has one row per unit and one column per candidate precision (e.g. from
:func:`impjax.scores.hawq`); ``choices`` lists the candidates in increasing cost: integer bits
or float formats (``"float8_e4m3fn"``, ``"bfloat16"``: 8 and 16 bits). Three allocators:

* :func:`knapsack`: the exact multiple-choice knapsack (minimum total sensitivity whose
  bits fit the budget) by dynamic programming over costs divided by their common divisor,
  as HAWQ-V3's integer program but without a solver;
* :func:`greedy`: start every unit at the cheapest choice and repeatedly take the upgrade
  with the most sensitivity removed per extra bit that still fits;
* :func:`lowering`: Layer-Wise Quantization's ordering: every unit at ``high``, then the
  least important units, in order, drop to ``low`` until the average meets the budget.

Each works on flat arrays (jittable; costs and budget static) and, through
:func:`allocate` and :func:`order_bits`, on trees, returning a bits tree for
:func:`impjax.transforms.fake_quant`; :func:`layer_importance` spreads one score per layer
(e.g. block influence) over its units for :func:`order_bits`. :func:`salient_channels` picks
input channels to keep at higher precision (PTQ1.61).

References: Yao et al. 2021, "HAWQ-V3: Dyadic Neural Network Quantization"; Dong et al. 2020,
"HAWQ-V2"; Dumitru et al. 2024, "Layer-Wise Quantization: A Pragmatic and Effective Method
for Quantizing LLMs Beyond Integer Bit-Levels"; Zhao et al. 2024, "PTQ1.61".

Example:
  >>> import jax.numpy as jnp, numpy as np
  >>> from impjax import select
  >>> table = jnp.array([[9.0, 1.0], [1.0, 0.5]])   # unit 0 suffers far more at 2 bits
  >>> costs = np.array([[2, 4], [2, 4]])             # bits of one-weight units
  >>> select.knapsack(table, costs, 6).tolist()
  [1, 0]
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import groups
from impjax import tree_utils
from impjax.groups import granularity as gran
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


def _check_fits(costs: np.ndarray, budget: int) -> None:
  """Raises unless every unit at its cheapest choice fits ``budget``."""
  cheapest = int(costs.min(axis=1).sum())
  if cheapest > budget:
    raise ValueError(f"No allocation fits the budget of {budget}: the cheapest costs "
                     f"{cheapest}.")


def knapsack(table: jax.Array, costs: np.ndarray, budget: int) -> jax.Array:
  """Exact multiple-choice knapsack: one choice per unit minimizing the summed sensitivity
  with summed cost at most ``budget``.

  Dynamic programming over total cost (divided by the greatest common divisor of all costs)
  with ``lax.scan`` over units, then a backward pass; ties go to the cheaper choice and the
  cheaper total. Time and memory grow with ``units * budget / gcd``.

  Args:
    table: ``(units, choices)`` float sensitivities (may be traced).
    costs: ``(units, choices)`` non-negative integer costs (static numpy).
    budget: the largest total cost (static int).

  Returns:
    ``(units,)`` int32 choice indices.

  Example:
    >>> knapsack(jnp.array([[3.0, 0.0], [2.0, 0.0]]), np.array([[1, 2], [1, 2]]), 3).tolist()
    [1, 0]
  """
  costs = np.asarray(costs, np.int64)
  if np.any(costs < 0):
    raise ValueError("knapsack costs must be non-negative.")
  _check_fits(costs, budget)
  divisor = math.gcd(*costs.ravel().tolist(), 0) or 1
  steps = costs // divisor
  width = min(budget // divisor, int(steps.max(axis=1).sum())) + 1
  return _knapsack(jnp.asarray(table, jnp.float32), jnp.asarray(steps, jnp.int32), width=width)


@functools.partial(jax.jit, static_argnames=("width",))
def _knapsack(table: jax.Array, steps: jax.Array, *, width: int) -> jax.Array:
  """The dynamic program of :func:`knapsack` over totals ``0 .. width - 1``."""
  index = jnp.arange(width)

  def forward(best, unit):
    sens, cost = unit
    shifted = jax.vmap(lambda c: jnp.where(index >= c, jnp.roll(best, c), jnp.inf))(cost)
    candidates = shifted + sens[:, None]
    return jnp.min(candidates, axis=0), jnp.argmin(candidates, axis=0).astype(jnp.int32)

  start = jnp.full((width,), jnp.inf, jnp.float32).at[0].set(0.0)
  final, picks = lax.scan(forward, start, (table, steps))

  def backward(spent, unit):
    row, cost = unit
    choice = row[spent]
    return spent - cost[choice], choice
  _, chosen = lax.scan(backward, jnp.argmin(final).astype(jnp.int32), (picks, steps),
                       reverse=True)
  return chosen


def greedy(table: jax.Array, costs: np.ndarray, budget: int) -> jax.Array:
  """Greedy allocation by sensitivity removed per extra bit.

  Every unit starts at its first (cheapest) choice; each round applies, among the upgrades
  that still fit and lower the sensitivity, the one with the largest
  ``(table[u, now] - table[u, c]) / (costs[u, c] - costs[u, now])`` (ties: lowest unit,
  then cheapest choice), until none is left.

  Args:
    table: ``(units, choices)`` float sensitivities (may be traced).
    costs: ``(units, choices)`` integer costs, increasing along choices (static numpy).
    budget: the largest total cost (static int).

  Returns:
    ``(units,)`` int32 choice indices.

  Example:
    >>> greedy(jnp.array([[3.0, 0.0], [2.0, 0.0]]), np.array([[1, 2], [1, 2]]), 3).tolist()
    [1, 0]
  """
  costs = np.asarray(costs, np.int64)
  if np.any(np.diff(costs, axis=1) <= 0):
    raise ValueError("greedy needs costs strictly increasing along the choices.")
  _check_fits(costs, budget)
  return _greedy(jnp.asarray(table, jnp.float32), jnp.asarray(costs, jnp.int32),
                 jnp.int32(budget))


@jax.jit
def _greedy(table: jax.Array, cost: jax.Array, budget: jax.Array) -> jax.Array:
  """The upgrade loop of :func:`greedy`."""
  units, num_choices = table.shape
  rows = jnp.arange(units)

  def ratios(state):
    chosen, spent = state
    gain = table[rows, chosen][:, None] - table
    extra = cost - cost[rows, chosen][:, None]
    ok = ((jnp.arange(num_choices)[None, :] > chosen[:, None]) & (gain > 0)
          & (extra <= budget - spent))
    return jnp.where(ok, gain / jnp.where(ok, extra, 1).astype(jnp.float32), -jnp.inf), extra

  def cond(state):
    return jnp.max(ratios(state)[0]) > -jnp.inf

  def body(state):
    chosen, spent = state
    ratio, extra = ratios(state)
    flat = jnp.argmax(ratio)
    unit, choice = flat // num_choices, flat % num_choices
    return chosen.at[unit].set(choice), spent + extra[unit, choice]

  start = (jnp.zeros((units,), jnp.int32), jnp.sum(cost[:, 0]))
  return lax.while_loop(cond, body, start)[0]


def lowering(importance: jax.Array, sizes: np.ndarray, low: int, high: int,
             avg_bits: float) -> jax.Array:
  """Layer-Wise Quantization: the least important units drop from ``high`` to ``low`` bits,
  in order of importance, until the size-weighted average is at most ``avg_bits``.

  Args:
    importance: ``(units,)`` scores, higher = keep at ``high`` (may be traced; ties: the
      earlier unit drops first).
    sizes: ``(units,)`` weights per unit (static).
    low: the lower bit-width.
    high: the higher bit-width.
    avg_bits: the target average, in ``[low, high]``.

  Returns:
    ``(units,)`` int32 choice indices: 0 for ``low``, 1 for ``high``.

  Example:
    >>> lowering(jnp.array([3.0, 1.0, 2.0, 4.0]), np.ones(4), 2, 4, 3.0).tolist()
    [1, 0, 0, 1]
  """
  if not low < high:
    raise ValueError(f"lowering needs low < high, got low={low}, high={high}.")
  if not low <= avg_bits <= high:
    raise ValueError(f"avg_bits {avg_bits} must lie in [low, high] = [{low}, {high}].")
  sizes = np.asarray(sizes, np.int64)
  to_save = math.ceil((high - avg_bits) * int(sizes.sum()))
  return _lowering(jnp.asarray(importance, jnp.float32),
                   jnp.asarray(sizes * (high - low), jnp.int32), jnp.int32(to_save))


@jax.jit
def _lowering(importance: jax.Array, savings: jax.Array, to_save: jax.Array) -> jax.Array:
  """Lowers the shortest prefix of the importance order whose savings reach ``to_save``."""
  order = jnp.argsort(importance, stable=True)
  saved = jnp.cumsum(savings[order])
  count = jnp.where(to_save > 0, jnp.searchsorted(saved, to_save, side="left") + 1, 0)
  lowered = jnp.zeros(savings.shape, jnp.bool_).at[order].set(jnp.arange(savings.size) < count)
  return jnp.where(lowered, 0, 1).astype(jnp.int32)


def unit_sizes(params: Any, the_plan: Any) -> Any:
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


def _flat_units(tree: Any, the_plan: Any) -> tuple[list, Any]:
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


def to_bits(choice_index: Any, choices: Sequence[Choice], params: Any, the_plan: Any) -> Any:
  """A bits tree for :func:`impjax.transforms.fake_quant` from per-unit choice indices.

  Leaf units give scalar bits, ``neurons(axis)`` units give bits shaped to broadcast along
  that axis, dense leaves give ``None``. Float formats (strings) need concrete indices and
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
    if g.kind == "leaf":
      return bits.reshape(())
    if g.kind == "neurons":
      view = [1] * np.ndim(x)
      view[g.axis % np.ndim(x)] = np.shape(x)[g.axis]
      return bits.reshape(view)
    raise ValueError(f"Leaf '{path}': bit allocation supports leaf() and neurons() units, "
                     f"not {g.kind}.")
  return tree_utils.map_with_path(leaf, the_plan, params, choice_index,
                                  is_leaf=lambda v: isinstance(v, groups.Granularity))


def allocate(table: Any, params: Any, the_plan: Any, choices: Sequence[Choice], *,
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


def order_bits(importance: Any, params: Any, the_plan: Any, low: int, high: int,
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


def layer_importance(layer_scores: Mapping[str, Any], params: Any, the_plan: Any) -> Any:
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


def gain_per_bit(table: Any, params: Any, the_plan: Any, choices: Sequence[Choice],
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


def average_bits(bits: Any, params: Any, salient: Any = None, salient_bits: int = 8) -> float:
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


def salient_channels(importance: Any, the_plan: Any, fraction: float, axis: int = -2) -> Any:
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
