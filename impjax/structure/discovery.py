"""A model's structure from its computation: each kernel's axes and the coupled groups.

:func:`discover` traces ``fn(params, *inputs)`` (:func:`impjax.structure.trace`, abstract values
suffice) and reads the axis classes into a :class:`Structure`, a plain value to print and
override:

- ``kernels``: ``{path: KernelAxes}`` for every leaf a ``dot_general``, convolution or gather
  consumes: contraction (input) axes, output axes, the layer axis of a scanned stack, and
  whether it reads the model's input or writes its output.
- ``groups``: ``{name: Group}``, the axes pruned together (DepGraph's coupled groups), each a
  :class:`impjax.groups.Coupled` with its kind: ``hidden`` (an MLP's or a conv block's inner
  units: producer outputs, their bias, a gate, the consumer's contraction), ``heads`` (query,
  key, value and output projections; with grouped-query attention one unit is a kv head with
  its query heads), ``query_groups`` (the index of a query head within its kv head's group),
  ``head_dim``, ``stream`` (the residual stream, across every block and tied
  embeddings) and ``fixed`` (axes of the model's input or output, or through an operation the
  walk cannot follow, never pruned). A convolution kernel's spatial axes belong to no group.

Reference: Fang et al. 2023, "DepGraph: Towards Any Structural Pruning".

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax import structure
  >>> params = {"fc1": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)},
  ...           "fc2": {"kernel": jnp.ones((8, 3))}}
  >>> def mlp(p, x):
  ...   return jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"]
  >>> s = structure.discover(mlp, params, jnp.ones((2, 4)))
  >>> s.kernels["fc1/kernel"].contraction, s.kernels["fc1/kernel"].output
  ((0,), (1,))
  >>> [(m.path, m.axis) for m in s.groups["hidden:fc1/kernel"].coupled.members]
  [('fc1/bias', 0), ('fc1/kernel', 1), ('fc2/kernel', 0)]
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from impjax import groups as groups_lib
from impjax import tree_utils
from impjax.structure import tracing


class KernelAxes(NamedTuple):
  """How a computation consumes one parameter leaf.

  Attributes:
    kind: ``dense`` (a ``dot_general``), ``conv``, ``embedding`` (a gather; a tied embedding
      is also contracted, as the output projection) .
    contraction: axes summed against the activation (input features; a conv's spatial and
      input-channel axes).
    output: axes that index the output features.
    layer: the layer axis of a stacked (scanned) leaf, else ``None``.
    reads_input: the leaf consumes the model's input (a stem, an input embedding).
    writes_output: its output features are the model's output features (a classifier, the
      logit projection).
  """
  kind: str
  contraction: tuple[int, ...]
  output: tuple[int, ...]
  layer: int | None = None
  reads_input: bool = False
  writes_output: bool = False


class Group(NamedTuple):
  """A coupled group and what the computation does with it.

  Attributes:
    kind: ``hidden``, ``heads``, ``query_groups``, ``head_dim``, ``stream`` or ``fixed``.
    coupled: the members (:class:`impjax.groups.Coupled` of :class:`impjax.groups.Member` s).
    units: units per layer.
    exact: removing units changes nothing but their own contribution (no normalization
      statistic or other reduction runs over the units), so the compacted model equals the
      masked one.
    producer: the kernel whose output axis the units are (the group's name is
      ``kind:producer``), or the first member's leaf where no kernel outputs them.
  """
  kind: str
  coupled: groups_lib.Coupled
  units: int
  exact: bool
  producer: str


class Structure(NamedTuple):
  """Kernel axes and coupled groups of a model (see :func:`discover`)."""
  kernels: dict[str, KernelAxes]
  groups: dict[str, Group]

  def prunable(self, *kinds: str) -> dict[str, groups_lib.Coupled]:
    """``{name: Coupled}`` of the exact groups of ``kinds`` (default: hidden units and heads).

    Example:
      >>> Structure({}, {}).prunable()
      {}
    """
    kinds = kinds or ("hidden", "heads")
    return {n: g.coupled for n, g in self.groups.items() if g.kind in kinds and g.exact}

  def describe(self) -> str:
    """A table of the groups: name, kind, units, members."""
    lines = []
    for name, g in self.groups.items():
      members = ", ".join(f"{m.path}[{m.axis}]" for m in groups_lib.members(g.coupled))
      lines.append(f"{name:<48} {g.kind:<9} {g.units:>6}  {members}")
    return "\n".join(lines)


_NOT_UNITS = {"opaque", "input", "output", "layer"}
_ATTENTION = {"attn_batch", "attn_contract", "attn_free"}


def flatten_axis(graph, node: int, depth: int = 0) -> list[int]:
  """The non-composite class roots that make up ``node``'s index space, outermost first."""
  factors = graph.factors(node)
  if not factors or depth > 16:
    return [graph.find(node)]
  return [r for f in factors for r in flatten_axis(graph, f, depth + 1)]


def _ancestor_flags(graph, leaf_nodes) -> dict[int, set[tuple[str, int]]]:
  """``{unit root: {(flag, position)}}``: flags of composite classes that contain a unit root,
  with the root's position among their factors (0: outermost)."""
  out: dict[int, set[tuple[str, int]]] = {}
  seen = set()
  stack = [n for nodes in leaf_nodes for n in nodes]
  while stack:
    node = graph.find(stack.pop())
    if node in seen:
      continue
    seen.add(node)
    flat = flatten_axis(graph, node)
    if len(flat) > 1:
      for pos, r in enumerate(flat):
        out.setdefault(r, set()).update((f, pos) for f in graph.flags(node))
      stack.extend(graph.factors(node))
  return out


def _kind(flags: frozenset, ancestors: set) -> str:
  if flags & {"residual", "carry"}:
    return "stream"
  if flags & _NOT_UNITS or any(f in _NOT_UNITS for f, _ in ancestors):
    return "fixed"
  if "attn_batch" in flags or ("attn_batch", 0) in ancestors:
    return "heads"
  if not flags & _ATTENTION and any(f == "attn_batch" and pos for f, pos in ancestors):
    return "query_groups"
  if "attn_query" in flags and not flags & {"attn_batch", "attn_contract"}:
    return "query_groups"
  if flags & _ATTENTION or any(f in _ATTENTION for f, _ in ancestors):
    return "head_dim"
  if "produced" in flags and ("consumed" in flags
                              or any(f == "consumed" for f, _ in ancestors)):
    return "hidden"  # consumed itself, or as a factor of a flattened axis (conv -> dense)
  return "fixed"


def discover(fn: Callable[..., Any], params: tree_utils.Params, *inputs: Any) -> Structure:
  """Kernel axes and coupled groups of ``fn(params, *inputs)``.

  Args:
    fn: the model as a pure function of its params and inputs.
    params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``; nothing is computed).
    *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    A :class:`Structure`.
  """
  t = tracing.trace(fn, params, *inputs)
  graph = t.graph
  kernels = _kernels(t)
  ancestors = _ancestor_flags(graph, t.leaf_nodes.values())
  by_root: dict[int, list[groups_lib.Member]] = {}
  for path, nodes in t.leaf_nodes.items():
    layer = t.layer_axes.get(path)
    for axis, node in enumerate(nodes):
      flat = flatten_axis(graph, node)
      sizes = [graph.size(r) for r in flat]
      for pos, root in enumerate(flat):
        if sizes[pos] == 1 or graph.flags(root) & {"layer", "window"}:
          continue
        by_root.setdefault(root, []).append(groups_lib.Member(
            path, axis, inner=math.prod(sizes[pos + 1:]), outer=math.prod(sizes[:pos]),
            layer=layer))
  found: dict[str, Group] = {}
  for root, members in by_root.items():
    if not any(m.path in kernels for m in members):
      continue
    flags = graph.flags(root)
    kind = _kind(flags, ancestors.get(root, set()))
    if any(m.layer is not None for m in members) and not all(m.layer is not None
                                                             for m in members):
      members = [m._replace(layer=None) for m in members]
    producer = next((m.path for m in members if m.path in kernels
                     and m.axis in kernels[m.path].output), members[0].path)
    name = f"{kind}:{producer}"
    while name in found:
      name += "'"
    found[name] = Group(kind, groups_lib.Coupled(tuple(members)), graph.size(root),
                        kind != "fixed" and not flags & (_NOT_UNITS | {"reduced"}), producer)
  order = {p: i for i, p in enumerate(t.paths)}
  found = dict(sorted(found.items(), key=lambda kv: (
      order[kv[1].coupled.members[0].path], kv[1].coupled.members[0].axis)))
  return Structure(kernels, found)


def _kernels(t: tracing.Trace) -> dict[str, KernelAxes]:
  graph = t.graph
  by_path: dict[str, list[tracing.Use]] = {}
  for use in t.uses:
    by_path.setdefault(use.path, []).append(use)
  out = {}
  for path, uses in by_path.items():
    contracted = [u for u in uses if u.kind != "gather"]
    kind = ("embedding" if any(u.kind == "gather" for u in uses)
            else "conv" if any(u.kind == "conv" for u in uses) else "dense")
    if contracted:
      contraction = tuple(sorted({a for u in contracted for a in u.contraction}))
      output = tuple(sorted({a for u in contracted for a in u.output} - set(contraction)))
    else:
      contraction = ()
      output = tuple(sorted({a for u in uses for a in u.output}))
    nodes = t.leaf_nodes[path]
    writes = bool(contracted) and any(
        "output" in graph.flags(nodes[a]) and not graph.flags(nodes[a]) & {"residual", "carry"}
        for a in output)
    out[path] = KernelAxes(kind, contraction, output,
                           t.layer_axes.get(path),
                           kind == "embedding" or any(u.reads_input for u in uses), writes)
  return out
