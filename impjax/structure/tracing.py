"""The walk over a jaxpr that builds the :class:`AxisGraph` of a computation.

:func:`trace` runs ``fn(params, *inputs)`` under ``jax.make_jaxpr`` on abstract values (no FLOPs,
no memory) and walks its equations, primitive by primitive, merging the axes that share one
index space: elementwise operands, ``broadcast_in_dim``, ``transpose``, ``reshape`` (runs of equal
products; a split or merge makes a composite node), ``dot_general`` (contracting and batch
dimensions), convolutions (feature dimensions), reductions, pooling (the axes outside its
window), slices, concatenations, gathers, and
the sub-jaxprs of ``jit``, ``remat``, custom derivatives, ``cond``, ``while`` and ``scan`` (an
``xs`` operand's leading axis is the layer axis; a carry stays one class through every
iteration). A primitive it does not know makes its axes ``opaque``, never coupled by guess.

Each parameter leaf's axes are followed through transposes, casts, reshapes and scans to every
``dot_general``, convolution and gather that consumes it, recorded as a :class:`Use`.

Example:
  >>> import jax.numpy as jnp
  >>> t = trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"],
  ...           {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 3))}, jnp.ones((2, 4)))
  >>> [(u.path, u.kind, u.contraction, u.output) for u in t.uses]
  [('w1', 'dot', (0,), (1,)), ('w2', 'dot', (0,), (1,))]
  >>> t.graph.find(t.leaf_nodes["w1"][1]) == t.graph.find(t.leaf_nodes["w2"][0])
  True
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax._src import core as jax_core
from jax.extend import core
import numpy as np

from impjax import tree_utils
from impjax.structure.axis_graph import AxisGraph

Nodes = tuple[int, ...]


class Prov(NamedTuple):
  """Which parameter leaf a value is a view of: ``axes[i]`` are the leaf axes behind the
  value's axis ``i`` (``()``: none); ``layer`` the leaf axes consumed by enclosing scans."""
  path: str
  axes: tuple[tuple[int, ...], ...]
  layer: tuple[int, ...] = ()


class Use(NamedTuple):
  """One consumption of a parameter leaf by a ``dot_general``, convolution or gather.

  Attributes:
    path: the leaf's path.
    kind: ``dot``, ``conv`` or ``gather``.
    contraction: leaf axes contracted with the activation (a gather's: none).
    output: leaf axes that become output axes (a gather's: the looked-up feature axes).
    batch: leaf axes that are batch dimensions of the contraction.
    indexed: leaf axes indexed by data (a gather's vocabulary axis).
    layer: leaf axes iterated by an enclosing ``scan`` (a stacked leaf's layer axis).
    reads_input: the activation operand is a model input itself (up to reshapes and casts).
    site: ``(context, equation index)`` of the consuming equation in the jaxpr walk.
    activation: for a ``dot_general`` of a leaf with an activation, the activation operand's
      position (0 or 1) and its contracting dimensions, paired in order with
      ``contraction_dims``; ``None`` otherwise.
    contraction_dims: the leaf axes behind each contracting dimension of the leaf's operand.
  """
  path: str
  kind: str
  contraction: tuple[int, ...]
  output: tuple[int, ...]
  batch: tuple[int, ...] = ()
  indexed: tuple[int, ...] = ()
  layer: tuple[int, ...] = ()
  reads_input: bool = False
  site: tuple = ()
  activation: tuple[int, tuple[int, ...]] | None = None
  contraction_dims: tuple[tuple[int, ...], ...] = ()


class Trace(NamedTuple):
  """Everything the walk learned.

  Attributes:
    graph: the axis graph.
    jaxpr: the closed jaxpr of ``fn(params, *inputs)``.
    paths: leaf paths of ``params`` in flattening order.
    leaf_nodes: ``{path: nodes of the leaf's axes}``.
    uses: every :class:`Use` of a leaf, in program order.
    layer_axes: ``{path: axis}`` of the leaves a ``scan`` iterates over (stacked layers).
    nodes: ``{(context, var): nodes}`` for every value, for re-evaluation with new sizes.
    num_inputs: how many leaves of ``inputs`` follow the params among the jaxpr's invars.
  """
  graph: AxisGraph
  jaxpr: Any
  paths: tuple[str, ...]
  leaf_nodes: dict[str, Nodes]
  uses: list[Use]
  layer_axes: dict[str, int]
  nodes: dict[tuple[tuple, Any], Nodes]
  num_inputs: int


_PASS_THROUGH = {"optimization_barrier", "sharding_constraint", "copy", "copy_p",
                 "mesh_cast", "reshard"}
_SCAN_AXIS = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
# Parameters that hold the sub-jaxpr of a call-like primitive (jit, remat, custom derivatives).
CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Elementwise primitives whose output is still a view of a parameter operand (a cast, a
# masked or scaled kernel) for the uses it reaches.
_VIEWS = {"convert_element_type", "neg", "reduce_precision", "mul", "div", "select_n", "copy",
          "copy_p"}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
               "reduce_or", "reduce_xor", "argmax", "argmin", "reduce_precision_sum"}


def open_jaxpr(j: Any) -> tuple[Any, list]:
  """``(jaxpr, consts)`` of a ``ClosedJaxpr`` or an open ``Jaxpr``."""
  if isinstance(j, core.ClosedJaxpr):
    return j.jaxpr, list(j.consts)
  return j, []


def _shape(v: Any) -> tuple[int, ...]:
  return tuple(getattr(v.aval, "shape", ()))


class _Walker:
  """State of one walk: the graph, value nodes, provenance and recorded uses."""

  def __init__(self):
    self.graph = AxisGraph()
    self.nodes: dict[tuple[tuple, Any], Nodes] = {}
    self.provs: dict[tuple[tuple, Any], Prov] = {}
    self.inputs: set[tuple[tuple, Any]] = set()
    self.uses: list[Use] = []
    self.layer_axes: dict[str, int] = {}

  def fresh(self, shape, *flags) -> Nodes:
    return tuple(self.graph.new(s, *flags) for s in shape)

  def read(self, ctx, v) -> tuple[Nodes, Prov | None, bool]:
    if isinstance(v, core.Literal):
      return self.fresh(np.shape(v.val)), None, False
    key = (ctx, v)
    return self.nodes[key], self.provs.get(key), key in self.inputs

  def write(self, ctx, v, nodes, prov=None, is_input=False):
    if isinstance(v, jax_core.DropVar):
      return
    self.nodes[(ctx, v)] = tuple(nodes)
    if prov is not None:
      self.provs[(ctx, v)] = prov
    if is_input:
      self.inputs.add((ctx, v))

  def link(self, a: int, b: int) -> None:
    g = self.graph
    if g.size(a) != 1 and g.size(b) != 1:
      g.union(a, b)

  def opaque(self, *node_lists) -> None:
    for nodes in node_lists:
      for n in nodes:
        if self.graph.size(n) != 1:
          self.graph.flag(n, "opaque")

  # -- the walk ---------------------------------------------------------------------------

  def run(self, jaxpr, ctx, in_nodes, in_provs, in_inputs, consts=()) -> tuple[list, list, list]:
    for v, c in zip(jaxpr.constvars, consts):
      self.write(ctx, v, self.fresh(np.shape(c)))
    for v, n, p, i in zip(jaxpr.invars, in_nodes, in_provs, in_inputs):
      self.write(ctx, v, n, p, i)
    for k, eqn in enumerate(jaxpr.eqns):
      self.equation(ctx, k, eqn)
    outs = [self.read(ctx, v) for v in jaxpr.outvars]
    return [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs]

  def call(self, ctx, k, branch, closed, ins) -> tuple[list, list, list]:
    jaxpr, consts = open_jaxpr(closed)
    return self.run(jaxpr, ctx + ((k, branch),), [i[0] for i in ins], [i[1] for i in ins],
                    [i[2] for i in ins], consts)

  def equation(self, ctx, k, eqn) -> None:
    name = eqn.primitive.name
    ins = [self.read(ctx, v) for v in eqn.invars]
    rule = getattr(self, "_" + name, None)
    if rule is not None:
      rule(ctx, k, eqn, ins)
    elif name == "scan":
      self.scan(ctx, k, eqn, ins)
    elif name == "cond":
      self.cond(ctx, k, eqn, ins)
    elif name == "while":
      self.while_loop(ctx, k, eqn, ins)
    elif any(p in eqn.params for p in CALL_PARAMS):
      closed = next(eqn.params[p] for p in CALL_PARAMS if p in eqn.params)
      outs = self.call(ctx, k, 0, closed, ins)
      for v, n, p, i in zip(eqn.outvars, *outs):
        self.write(ctx, v, n, p, i)
    elif name in _PASS_THROUGH:
      for v, i in zip(eqn.outvars, ins):
        self.write(ctx, v, i[0], i[1], i[2])
    elif name in _REDUCTIONS:
      self.reduce(ctx, eqn, ins)
    elif self.is_elementwise(eqn):
      self.elementwise(ctx, eqn, ins)
    else:
      outs = [self.fresh(_shape(v)) for v in eqn.outvars]
      self.opaque(*[i[0] for i in ins], *outs)
      for v, n in zip(eqn.outvars, outs):
        self.write(ctx, v, n)

  @staticmethod
  def is_elementwise(eqn) -> bool:
    if len(eqn.outvars) != 1:
      return False
    out = _shape(eqn.outvars[0])
    return all(len(_shape(v)) in (0, len(out)) and all(
        a in (b, 1) for a, b in zip(_shape(v), out)) for v in eqn.invars if _shape(v))

  def elementwise(self, ctx, eqn, ins) -> None:
    (out_var,) = eqn.outvars
    shape = _shape(out_var)
    full = [i for i in ins if len(i[0]) == len(shape) and len(shape)]
    name = eqn.primitive.name
    if name in _SCAN_AXIS:
      out = self.fresh(shape)
      axis = eqn.params["axis"]
      for i in full:
        for d, (a, b) in enumerate(zip(i[0], out)):
          if d != axis:
            self.link(a, b)
        self.opaque([i[0][axis], out[axis]])
      self.write(ctx, out_var, out)
      return
    exact = [i for i in full if tuple(self.graph.size(n) for n in i[0]) == shape]
    base = exact[0][0] if exact else self.fresh(shape)
    if name in ("add", "sub", "add_any") and len(full) == 2 and not any(i[1] for i in full):
      for a, b in zip(full[0][0], full[1][0]):
        # Two different producers' outputs summed: a residual connection.
        if self.graph.size(a) != 1 and self.graph.find(a) != self.graph.find(b) and (
            "produced" in self.graph.flags(a) and "produced" in self.graph.flags(b)):
          self.graph.flag(a, "residual")
    for i in full:
      for a, b in zip(i[0], base):
        self.link(a, b)
    prov = None
    if name in _VIEWS:
      prov = next((i[1] for i in exact if i[1] is not None), None)
    is_in = name in _VIEWS | {"add", "sub"} and any(i[2] for i in exact)
    self.write(ctx, out_var, base, prov, is_in)

  def reduce(self, ctx, eqn, ins) -> None:
    (nodes, _, _), = ins[:1]
    axes = set(eqn.params["axes"])
    for d in axes:
      if self.graph.size(nodes[d]) != 1:
        self.graph.flag(nodes[d], "reduced")
    self.write(ctx, eqn.outvars[0], tuple(n for d, n in enumerate(nodes) if d not in axes))

  # -- structural primitives ----------------------------------------------------------------

  def _broadcast_in_dim(self, ctx, k, eqn, ins):
    nodes, prov, is_in = ins[0]
    shape = eqn.params["shape"]
    dims = eqn.params["broadcast_dimensions"]
    out = list(self.fresh(shape))
    axes = [()] * len(shape)
    for j, d in enumerate(dims):
      if self.graph.size(nodes[j]) == shape[d]:
        out[d] = nodes[j]
        if prov is not None:
          axes[d] = prov.axes[j]
    self.write(ctx, eqn.outvars[0], out,
               prov and prov._replace(axes=tuple(axes)), is_in)

  def _transpose(self, ctx, k, eqn, ins):
    nodes, prov, is_in = ins[0]
    perm = eqn.params["permutation"]
    self.write(ctx, eqn.outvars[0], [nodes[p] for p in perm],
               prov and prov._replace(axes=tuple(prov.axes[p] for p in perm)), is_in)

  def _squeeze(self, ctx, k, eqn, ins):
    nodes, prov, is_in = ins[0]
    drop = {d % len(nodes) for d in eqn.params["dimensions"]}
    keep = [d for d in range(len(nodes)) if d not in drop]
    self.write(ctx, eqn.outvars[0], [nodes[d] for d in keep],
               prov and prov._replace(axes=tuple(prov.axes[d] for d in keep)), is_in)

  def _reshape(self, ctx, k, eqn, ins):
    nodes, prov, is_in = ins[0]
    if eqn.params.get("dimensions") is not None:
      out = self.fresh(_shape(eqn.outvars[0]))
      self.opaque(nodes, out)
      self.write(ctx, eqn.outvars[0], out)
      return
    new = tuple(eqn.params["new_sizes"])
    old = tuple(self.graph.size(n) for n in nodes)
    out = list(self.fresh(new))
    axes = [()] * len(new)
    i = j = 0
    ok = True
    while i < len(old) or j < len(new):
      if i < len(old) and old[i] == 1:
        i += 1
        continue
      if j < len(new) and new[j] == 1:
        j += 1
        continue
      ri, rj = [i], [j]
      pi, pj = old[i], new[j]
      i, j = i + 1, j + 1
      while pi != pj:
        if pi < pj:
          ri.append(i); pi *= old[i]; i += 1
        else:
          rj.append(j); pj *= new[j]; j += 1
      ri = [d for d in ri if old[d] != 1]
      rj = [d for d in rj if new[d] != 1]
      src = tuple(a for d in ri for a in (prov.axes[d] if prov else ()))
      if len(ri) == 1 and len(rj) == 1:
        out[rj[0]] = nodes[ri[0]]
      elif len(ri) == 1:
        self.graph.compose(nodes[ri[0]], tuple(out[d] for d in rj))
      elif len(rj) == 1:
        self.graph.compose(out[rj[0]], tuple(nodes[d] for d in ri))
      else:
        ok = False
        self.opaque([nodes[d] for d in ri], [out[d] for d in rj])
      for d in rj:
        axes[d] = src
    self.write(ctx, eqn.outvars[0], out,
               prov._replace(axes=tuple(axes)) if prov is not None and ok else None, is_in)

  def _dot_general(self, ctx, k, eqn, ins):
    (ln, lp, li), (rn, rp, ri) = ins[:2]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    g = self.graph
    for a, b in zip(lc, rc):
      self.link(ln[a], rn[b])
    for a, b in zip(lb, rb):
      self.link(ln[a], rn[b])
    lfree = [d for d in range(len(ln)) if d not in lc and d not in lb]
    rfree = [d for d in range(len(rn)) if d not in rc and d not in rb]
    out = [ln[d] for d in lb] + [ln[d] for d in lfree] + [rn[d] for d in rfree]
    if lp is None and rp is None:
      for d in lb:
        g.flag(ln[d], "attn_batch")
      for d in lc:
        g.flag(ln[d], "attn_contract")
      # An axis free in two attention products is on the query side of both (a query
      # head's index within its kv group, or the query positions).
      for nodes, free in ((ln, lfree), (rn, rfree)):
        for d in free:
          g.flag(nodes[d], "attn_query" if "attn_free" in g.flags(nodes[d]) else "attn_free")
    for side, (nodes, prov, free, contract, batch, other_in, other_prov, other_contract) in (
        enumerate(((ln, lp, lfree, lc, lb, ri, rp, rc), (rn, rp, rfree, rc, rb, li, lp, lc)))):
      if prov is None:
        continue
      for d in free:
        g.flag(nodes[d], "produced")
      for d in contract:
        g.flag(nodes[d], "consumed")
      activation = (1 - side, tuple(other_contract)) if other_prov is None else None
      self.uses.append(Use(prov.path, "dot", _leaf_axes(prov, contract), _leaf_axes(prov, free),
                           _leaf_axes(prov, batch), (), prov.layer, other_in, (ctx, k),
                           activation, tuple(prov.axes[d] for d in contract)))
    self.write(ctx, eqn.outvars[0], out)

  def _conv_general_dilated(self, ctx, k, eqn, ins):
    (ln, lp, li), (rn, rp, ri) = ins[:2]
    dn = eqn.params["dimension_numbers"]
    lhs, rhs, outs = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    shape = _shape(eqn.outvars[0])
    out = list(self.fresh(shape))
    groups = eqn.params["feature_group_count"]
    g = self.graph
    if eqn.params["batch_group_count"] != 1:
      self.opaque(ln, rn, out)
    else:
      self.link(ln[lhs[0]], out[outs[0]])
      if groups == 1:
        self.link(ln[lhs[1]], rn[rhs[1]])
        out[outs[1]] = rn[rhs[0]]
      elif g.size(rn[rhs[1]]) == 1 and g.size(rn[rhs[0]]) == g.size(ln[lhs[1]]):
        self.link(ln[lhs[1]], rn[rhs[0]])
        out[outs[1]] = rn[rhs[0]]
      else:
        self.opaque([ln[lhs[1]], rn[rhs[0]], rn[rhs[1]], out[outs[1]]])
    for d in rhs[2:]:
      g.flag(rn[d], "window")  # a kernel's spatial axis: never a unit of any group
    if rp is not None:
      g.flag(rn[rhs[0]], "produced")
      g.flag(rn[rhs[1]], "consumed")
      self.uses.append(Use(rp.path, "conv", _leaf_axes(rp, tuple(rhs[2:]) + (rhs[1],)),
                           _leaf_axes(rp, (rhs[0],)), (), (), rp.layer, li))
    self.write(ctx, eqn.outvars[0], out)

  def _gather(self, ctx, k, eqn, ins):
    (on, op, _), _ = ins[:2]
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    out_shape = _shape(eqn.outvars[0])
    out = list(self.fresh(out_shape))
    kept = [d for d in range(len(on)) if d not in dn.collapsed_slice_dims
            and d not in dn.operand_batching_dims]
    full = []
    for d, o in zip(kept, dn.offset_dims):
      if sizes[d] == self.graph.size(on[d]):
        out[o] = on[d]
        full.append(d)
      else:
        self.opaque([on[d], out[o]])
    if op is not None:
      for d in full:
        self.graph.flag(on[d], "produced")
      self.uses.append(Use(op.path, "gather", (), _leaf_axes(op, full), (),
                           _leaf_axes(op, tuple(d for d in range(len(on)) if d not in full)),
                           op.layer))
    self.write(ctx, eqn.outvars[0], out)

  def _slice_like(self, ctx, eqn, nodes, prov, is_in, full_axes):
    out = list(self.fresh(_shape(eqn.outvars[0])))
    for d in range(len(nodes)):
      if d in full_axes:
        out[d] = nodes[d]
      else:
        self.opaque([nodes[d], out[d]])
    keep_prov = prov is not None and len(full_axes) == len(nodes)
    self.write(ctx, eqn.outvars[0], out, prov if keep_prov else None, is_in and keep_prov)

  def _slice(self, ctx, k, eqn, ins):
    nodes, prov, is_in = ins[0]
    st, lim, strides = (eqn.params["start_indices"], eqn.params["limit_indices"],
                        eqn.params["strides"])
    full = {d for d in range(len(nodes)) if st[d] == 0 and lim[d] == self.graph.size(nodes[d])
            and (strides is None or strides[d] == 1)}
    self._slice_like(ctx, eqn, nodes, prov, is_in, full)

  def _dynamic_slice(self, ctx, k, eqn, ins):
    nodes, prov, is_in = ins[0]
    sizes = eqn.params["slice_sizes"]
    full = {d for d in range(len(nodes)) if sizes[d] == self.graph.size(nodes[d])}
    self._slice_like(ctx, eqn, nodes, prov, is_in, full)

  def _reduce_window_sum(self, ctx, k, eqn, ins):
    """Pooling: the axes its window does not span pass through (a pooled conv's channels)."""
    nodes, _, _ = ins[0]
    p = eqn.params
    full = {d for d in range(len(nodes))
            if p["window_dimensions"][d] == p["window_strides"][d] == p["base_dilation"][d]
            == p["window_dilation"][d] == 1 and tuple(p["padding"][d]) == (0, 0)}
    self._slice_like(ctx, eqn, nodes, None, False, full)

  _reduce_window_max = _reduce_window_min = _reduce_window_sum

  def _dynamic_update_slice(self, ctx, k, eqn, ins):
    (on, _, _), (un, _, _) = ins[:2]
    for a, b in zip(on, un):
      if self.graph.size(a) == self.graph.size(b):
        self.link(a, b)
      else:
        self.opaque([a, b])
    self.write(ctx, eqn.outvars[0], on)

  def _pad(self, ctx, k, eqn, ins):
    nodes, _, _ = ins[0]
    config = eqn.params["padding_config"]
    full = {d for d, (lo, hi, interior) in enumerate(config) if lo == hi == interior == 0}
    self._slice_like(ctx, eqn, nodes, None, False, full)

  def _concatenate(self, ctx, k, eqn, ins):
    axis = eqn.params["dimension"]
    shape = _shape(eqn.outvars[0])
    out = list(self.fresh(shape))
    for nodes, _, _ in ins:
      for d, n in enumerate(nodes):
        if d == axis:
          self.opaque([n, out[d]])
        else:
          self.link(n, out[d])
    self.write(ctx, eqn.outvars[0], out)

  def _split(self, ctx, k, eqn, ins):
    nodes, _, _ = ins[0]
    axis = eqn.params["axis"]
    for v in eqn.outvars:
      out = list(self.fresh(_shape(v)))
      for d, n in enumerate(nodes):
        if d == axis:
          self.opaque([n, out[d]])
        else:
          self.link(n, out[d])
      self.write(ctx, v, out)

  def _iota(self, ctx, k, eqn, ins):
    self.write(ctx, eqn.outvars[0], self.fresh(_shape(eqn.outvars[0])))

  def _sort(self, ctx, k, eqn, ins):
    axis = eqn.params["dimension"]
    for v, (nodes, _, _) in zip(eqn.outvars, ins):
      out = list(nodes)
      out[axis] = self.graph.new(self.graph.size(nodes[axis]))
      self.opaque([nodes[axis], out[axis]])
      self.write(ctx, v, out)

  def _rev(self, ctx, k, eqn, ins):
    nodes, _, _ = ins[0]
    out = list(nodes)
    for d in eqn.params["dimensions"]:
      out[d] = self.graph.new(self.graph.size(nodes[d]))
      self.opaque([nodes[d], out[d]])
    self.write(ctx, eqn.outvars[0], out)

  # -- control flow -----------------------------------------------------------------------

  def scan(self, ctx, k, eqn, ins):
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
    layer = self.graph.new(p["length"], "layer")
    body_ins = list(consts) + list(carry)
    for nodes, prov, is_in in xs:
      self.link(layer, nodes[0])
      if prov is not None and prov.axes[0]:
        self.layer_axes.setdefault(prov.path, prov.axes[0][0])
      body_ins.append((nodes[1:], prov and Prov(prov.path, prov.axes[1:],
                                                 prov.layer + prov.axes[0]), is_in))
    outs = self.call(ctx, k, 0, p["jaxpr"], body_ins)
    out_nodes = outs[0]
    for (c_in, _, _), c_out in zip(carry, out_nodes[:nk]):
      for a, b in zip(c_in, c_out):
        self.link(a, b)
        if self.graph.size(a) != 1:
          self.graph.flag(a, "carry")
    for v, (c_in, _, _) in zip(eqn.outvars[:nk], carry):
      self.write(ctx, v, c_in)
    for v, ys in zip(eqn.outvars[nk:], out_nodes[nk:]):
      self.write(ctx, v, (layer,) + tuple(ys))

  def while_loop(self, ctx, k, eqn, ins):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    carry = ins[cn + bn:]
    self.call(ctx, k, 0, p["cond_jaxpr"], list(ins[:cn]) + list(carry))
    outs = self.call(ctx, k, 1, p["body_jaxpr"], list(ins[cn:cn + bn]) + list(carry))
    for (c_in, _, _), c_out in zip(carry, outs[0]):
      for a, b in zip(c_in, c_out):
        self.link(a, b)
    for v, (c_in, _, _) in zip(eqn.outvars, carry):
      self.write(ctx, v, c_in)

  def cond(self, ctx, k, eqn, ins):
    first = None
    for b, branch in enumerate(eqn.params["branches"]):
      outs = self.call(ctx, k, b, branch, ins[1:])[0]
      if first is None:
        first = outs
      else:
        for x, y in zip(first, outs):
          for a, c in zip(x, y):
            self.link(a, c)
    for v, n in zip(eqn.outvars, first):
      self.write(ctx, v, n)


def _leaf_axes(prov: Prov, dims) -> tuple[int, ...]:
  return tuple(sorted({a for d in dims for a in prov.axes[d]}))


def abstract(tree: Any) -> Any:
  """``tree`` with every leaf replaced by its ``jax.ShapeDtypeStruct`` (for tracing only).

  Example:
    >>> abstract({"w": jnp.ones((2, 3))})["w"]
    ShapeDtypeStruct(shape=(2, 3), dtype=float32)
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def trace(fn: Callable[..., Any], params: tree_utils.Params, *inputs: Any) -> Trace:
  """Walks the jaxpr of ``fn(params, *inputs)`` (abstract values suffice).

  Args:
    fn: a pure function of the params and the inputs (a Linen ``apply``, an NNX call of
      merged state, any ``fn(params, *inputs)``).
    params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``).
    *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    A :class:`Trace`.
  """
  closed = jax.make_jaxpr(fn)(params, *inputs)
  jaxpr = closed.jaxpr
  paths = tuple(tree_utils.path_names(params))
  num_params = len(paths)
  walker = _Walker()
  in_nodes, in_provs, in_inputs = [], [], []
  leaf_nodes = {}
  for i, v in enumerate(jaxpr.invars):
    nodes = walker.fresh(_shape(v))
    if i < num_params:
      leaf_nodes[paths[i]] = nodes
      in_provs.append(Prov(paths[i], tuple((a,) for a in range(len(nodes)))))
      in_inputs.append(False)
    else:
      for n in nodes:
        if walker.graph.size(n) != 1:
          walker.graph.flag(n, "input")
      in_provs.append(None)
      in_inputs.append(True)
    in_nodes.append(nodes)
  out_nodes, _, _ = walker.run(jaxpr, (), in_nodes, in_provs, in_inputs, closed.consts)
  for nodes in out_nodes:
    for n in nodes:
      if walker.graph.size(n) != 1:
        walker.graph.flag(n, "output")
  return Trace(walker.graph, closed, paths, leaf_nodes, walker.uses, walker.layer_axes,
               walker.nodes,
               len(jaxpr.invars) - num_params)

