"""Compaction that runs the user's own computation with smaller arrays.

:func:`compact_model` removes the dropped units of coupled groups from the params
(:func:`impjax.pruning.compact`) and returns a function that evaluates the traced jaxpr of the
user's model with the new sizes: every equation is bound again with its static shapes
(``reshape``, ``broadcast_in_dim``, ``iota``, slices and gathers) rewritten from the axis
classes, sub-jaxprs of ``jit``, ``remat`` and custom derivatives inlined, ``scan``, ``cond`` and
``while`` re-run with interpreted bodies. The model code is not edited; ``jax.jit`` of the
returned function is as fast as the original at the new widths.

Reference: Fang et al. 2023, "DepGraph" (physically removing coupled groups).

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from impjax import structure
  >>> params = {"w1": jnp.ones((4, 6)), "w2": jnp.ones((6, 2))}
  >>> fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
  >>> s = structure.discover(fn, params, jnp.ones((1, 4)))
  >>> keep = {name: np.arange(6) < 3 for name in s.prunable()}
  >>> small, small_fn = structure.compact_model(fn, params, s, keep, jnp.ones((1, 4)))
  >>> small["w1"].shape, small_fn(small, jnp.ones((1, 4))).shape
  ((4, 3), (1, 2))
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp
from jax.extend import core
import numpy as np

from impjax import groups
from impjax import pruning
from impjax import tree_utils
from impjax.structure import tracing
from impjax.structure.discovery import Structure
from impjax.structure.discovery import flatten_axis

def _group_root(t: tracing.Trace, group: groups.Coupled) -> int:
  """The axis class of a group, found from its first member's place in the leaf axis."""
  m = groups.members(group)[0]
  flat = flatten_axis(t.graph, t.leaf_nodes[m.path][m.axis])
  sizes = [t.graph.size(r) for r in flat]
  for pos, root in enumerate(flat):
    if math.prod(sizes[:pos]) == m.outer and math.prod(sizes[pos + 1:]) == m.inner:
      return root
  raise ValueError(f"Group member {m} does not match the traced axes of '{m.path}'.")


class Evaluator:
  """Evaluates a traced jaxpr with the sizes of the kept units (``kept``: ``{axis class:
  kept size}``; empty: the traced sizes)."""

  def __init__(self, t: tracing.Trace, kept: dict[int, int]):
    self.t, self.kept = t, kept

  def size(self, node: int) -> int:
    g = self.t.graph
    root = g.find(node)
    if root in self.kept:
      return self.kept[root]
    factors = g.factors(root)
    return math.prod(self.size(f) for f in factors) if factors else g.size(node)

  def shape(self, ctx, v) -> tuple[int, ...]:
    return tuple(self.size(n) for n in self.t.nodes[(ctx, v)])

  def run(self, jaxpr, ctx, args, consts=()):
    env = {}
    read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
    for v, c in zip(jaxpr.constvars, consts):
      if self.shape(ctx, v) != np.shape(c):
        raise NotImplementedError(f"A constant of shape {np.shape(c)} spans a pruned axis.")
      env[v] = c
    env.update(zip(jaxpr.invars, args))
    for k, eqn in enumerate(jaxpr.eqns):
      outs = self.equation(ctx, k, eqn, [read(v) for v in eqn.invars])
      for v, o in zip(eqn.outvars, outs):
        env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def call(self, ctx, k, branch, closed, args):
    jaxpr, consts = tracing.open_jaxpr(closed)
    return self.run(jaxpr, ctx + ((k, branch),), args, consts)

  def equation(self, ctx, k, eqn, args):
    name, p = eqn.primitive.name, dict(eqn.params)
    if name == "scan":
      return self.scan(ctx, k, p, args)
    if name == "cond":
      branches = [lambda *ops, b=b, br=br: self.call(ctx, k, b, br, list(ops))
                  for b, br in enumerate(p["branches"])]
      return lax.switch(args[0], branches, *args[1:])
    if name == "while":
      cn, bn = p["cond_nconsts"], p["body_nconsts"]
      cc, bc, init = args[:cn], args[cn:cn + bn], args[cn + bn:]
      cond = lambda c: self.call(ctx, k, 0, p["cond_jaxpr"], list(cc) + list(c))[0]
      body = lambda c: tuple(self.call(ctx, k, 1, p["body_jaxpr"], list(bc) + list(c)))
      return list(lax.while_loop(cond, body, tuple(init)))
    if any(c in p for c in tracing.CALL_PARAMS):
      closed = next(p[c] for c in tracing.CALL_PARAMS if c in p)
      return self.call(ctx, k, 0, closed, args)
    out_shape = self.shape(ctx, eqn.outvars[0]) if eqn.outvars else ()
    if name == "reshape":
      p["new_sizes"] = out_shape
    elif name in ("broadcast_in_dim", "iota"):
      p["shape"] = out_shape
    elif name in ("gather", "dynamic_slice"):
      in_shape = self.shape(ctx, eqn.invars[0])
      old = tuple(eqn.invars[0].aval.shape)
      p["slice_sizes"] = tuple(n if s == o else s
                               for s, o, n in zip(p["slice_sizes"], old, in_shape))
    elif name == "slice":
      old = tuple(eqn.invars[0].aval.shape)
      p["limit_indices"] = tuple(n if lim == o else lim for lim, o, n in zip(
          p["limit_indices"], old, self.shape(ctx, eqn.invars[0])))
    elif name == "split":
      if self.shape(ctx, eqn.invars[0])[p["axis"]] != eqn.invars[0].aval.shape[p["axis"]]:
        raise NotImplementedError("A split runs along a pruned axis.")
    out = eqn.primitive.bind(*args, **p)
    return out if eqn.primitive.multiple_results else [out]

  def scan(self, ctx, k, p, args):
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = args[:nc], args[nc:nc + nk], args[nc + nk:]

    def body(carry, x):
      outs = self.call(ctx, k, 0, p["jaxpr"], list(consts) + list(carry) + list(x))
      return tuple(outs[:nk]), tuple(outs[nk:])

    carry, ys = lax.scan(body, tuple(init), tuple(xs), length=p["length"],
                         reverse=p["reverse"], unroll=p["unroll"])
    return list(carry) + list(ys)


def compact_model(fn: Callable[..., Any], params: tree_utils.Params, s: Structure,
                  keep: dict[str, Any], *inputs: Any) -> tuple[Any, Callable[..., Any]]:
  """The smaller params and a function that runs them with the model's own computation.

  Args:
    fn: the model, ``fn(params, *inputs)``, as given to :func:`impjax.structure.discover`.
    params: its params.
    s: its :class:`Structure`.
    keep: ``{group name: bool keep vector}`` (``(layers, units)`` for a stacked group, one
      kept count in every layer); absent groups are kept whole.
    *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct`` s); the compacted function
      also takes inputs of other shapes (another batch size, another sequence length): the
      model is traced again at those shapes, once per shape.

  Returns:
    ``(small_params, small_fn)``: ``small_fn`` (jitted) of ``small_params`` equals ``fn`` of
    the masked params.
  """
  chosen = {name: s.groups[name].coupled for name in keep}
  small = pruning.compact(params, chosen, keep)
  abstract = tracing.abstract(params)
  counts = {name: int(np.asarray(keep[name], bool).sum(-1).max()) for name in chosen}
  programs: dict[Any, tuple] = {}

  def program(args):
    """The evaluator, jaxpr and output structure of ``fn`` traced at the shapes of ``args``."""
    key = tuple((np.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(args))
    if key not in programs:
      shapes = tracing.abstract(args)
      t = tracing.trace(fn, abstract, *shapes)
      kept = {t.graph.find(_group_root(t, group)): counts[name] for name, group in chosen.items()}
      programs[key] = (Evaluator(t, kept), t.jaxpr,
                       jax.tree.structure(jax.eval_shape(fn, abstract, *shapes)))
    return programs[key]

  program(inputs)  # traced now at the example shapes

  @jax.jit
  def small_fn(small_params, *args):
    evaluator, jaxpr, out_tree = program(args)
    flat = jax.tree.leaves(small_params) + jax.tree.leaves(args)
    outs = evaluator.run(jaxpr.jaxpr, (), flat, jaxpr.consts)
    return jax.tree.unflatten(out_tree, outs)

  return small, small_fn
