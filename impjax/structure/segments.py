"""A traced computation evaluated block by block, the values live between blocks carried over.

Layer-sequential one-shot pruning runs block ``i`` on the outputs of blocks ``0 .. i - 1``
already pruned. :class:`Segments` cuts the top level of a model's traced jaxpr where each block's
first kernel is consumed, and evaluates one segment at a time: from the values live at its start
(the hidden states, the inputs still to be read, the residual stream) to those live at its end,
with the params as they are now, capturing the input moments of the segment's kernels. A
``scan`` over a stack of layers (``nn.scan``, ``nnx.scan``, ``lax.scan`` over stacked params) is
cut between its iterations: a segment may run one iteration of its body, the carry and the
outputs stacked so far carried over to the next, and the iterations between the first and the
last share one compiled program (the index traced). The model runs once in total instead of once
per block; the live values of every calibration batch can stay on the host between segments
(``host=True``). Blocks a single top-level equation holds together otherwise (a ``jit`` around
several blocks, a leaf the scan closes over in one block and layers in others, a reversed
scan) cannot be cut apart: :func:`cut` returns ``None`` for them.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from impjax.structure import segments, tracing
  >>> params = {"a": jnp.eye(2), "b": 2 * jnp.eye(2)}
  >>> fn = lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]
  >>> t = tracing.trace(fn, params, jnp.ones((1, 2)))
  >>> seg = segments.cut(t, [["a"], ["b"]])
  >>> live = seg.start((jnp.ones((1, 2)),))
  >>> live, moments = seg.run(0, params, live)
  >>> sorted(moments.sq), [round(float(v), 3) for v in seg.outputs(params, live)[0][0]]
  (['a'], [1.523, 1.523])
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.extend import core
import jax.numpy as jnp

from impjax import tree_utils
from impjax.structure import capture as capture_lib
from impjax.structure import tracing

_WHOLE = math.inf  # a use outside any split scan spans all the equation's iterations


def _span(t: tracing.Trace, use: tracing.Use, layer: int | None) -> tuple | None:
  """``((eqn, first iteration), (eqn, last iteration))`` of one use at the top level, layer
  ``layer`` of a stacked leaf a top-level scan iterates; ``None`` where the layer is not one
  iteration of a forward top-level scan over the leaf."""
  ctx, k = use.site
  if layer is None:
    top = ctx[0][0] if ctx else k
    return (top, 0), (top, _WHOLE)
  if not ctx or not use.layer:
    return None
  top = ctx[0][0]
  eqn = t.jaxpr.jaxpr.eqns[top]
  if eqn.primitive.name != "scan" or eqn.params["reverse"]:
    return None
  leaf = t.jaxpr.jaxpr.invars[t.paths.index(use.path)]
  xs = eqn.invars[eqn.params["num_consts"] + eqn.params["num_carry"]:]
  if not any(v is leaf for v in xs):
    return None
  return (top, layer), (top, layer)


def cut(t: tracing.Trace, blocks: Sequence[Sequence[str | tuple[str, int | None]]]
        ) -> Segments | None:
  """:class:`Segments` of ``t`` starting where each block's first kernel is consumed, or
  ``None`` when two blocks share a top-level equation (other than as iterations of a scan) or
  come out of order. A block lists kernel paths, or ``(path, layer)`` for layer ``layer`` of a
  stacked kernel (``None``: the whole kernel)."""
  first, last = [], []
  for members in blocks:
    members = [m if isinstance(m, tuple) else (m, None) for m in members]
    spans = [_span(t, u, layer) for path, layer in members for u in t.uses
             if u.path == path and u.kind == "dot"]
    if not spans or None in spans:
      return None
    first.append(min(s[0] for s in spans))
    last.append(max(s[1] for s in spans))
  if any(last[i] >= first[i + 1] for i in range(len(blocks) - 1)):
    return None
  return Segments(t, first[1:])


class Segments:
  """The top-level equations of a traced jaxpr cut before each of ``starts`` (``(equation,
  iteration)``; an iteration above 0 cuts a scan between its iterations): segment ``i`` runs
  from the ``i``-th cut to the next. Build it with :func:`cut`."""

  def __init__(self, t: tracing.Trace, starts: Sequence[tuple[int, int]]):
    self.t = t
    jaxpr = t.jaxpr.jaxpr
    self.num_params = len(t.paths)
    split = {k for k, it in starts if it > 0}
    # The steps: a top-level equation, or one iteration of a scan cut between its iterations.
    self.steps = [(k, it) for k, eqn in enumerate(jaxpr.eqns)
                  for it in (range(eqn.params["length"]) if k in split else [None])]
    index = {step: s for s, step in enumerate(self.steps)}
    self.bounds = ([0] + [index.get((k, it), index.get((k, None))) for k, it in starts]
                   + [len(self.steps)])
    last_use = {}
    for k, eqn in enumerate(jaxpr.eqns):
      for v in eqn.invars:
        if not isinstance(v, core.Literal):
          last_use[v] = k
    for v in jaxpr.outvars:
      if not isinstance(v, core.Literal):
        last_use[v] = len(jaxpr.eqns)
    defined_at = {v: -1 for v in list(jaxpr.constvars) + list(jaxpr.invars[self.num_params:])}
    for k, eqn in enumerate(jaxpr.eqns):
      defined_at.update({v: k for v in eqn.outvars})
    # The values live at a bound: made before its equation and read at or after it (params
    # excluded); inside a scan, its carry and stacked outputs follow them.
    eqn_at = lambda b: self.steps[b][0] if b < len(self.steps) else len(jaxpr.eqns)
    self.live = [[v for v, k in defined_at.items() if k < eqn_at(b) <= last_use.get(v, -1)]
                 for b in self.bounds]
    self._programs: dict[tuple, Any] = {}

  def __len__(self) -> int:
    return len(self.bounds) - 1

  def start(self, inputs: tuple, *, host: bool = False) -> list:
    """The values live at the start of segment 0 for one batch of ``inputs``."""
    values = dict(zip(self.t.jaxpr.jaxpr.constvars, self.t.jaxpr.consts))
    values.update(zip(self.t.jaxpr.jaxpr.invars[self.num_params:], jax.tree.leaves(inputs)))
    live = [values[v] for v in self.live[0]]
    return jax.device_get(live) if host else live

  def _middle_iteration(self, i: int) -> int | None:
    """The iteration segment ``i`` runs alone, if it is neither its scan's first nor its last
    (then the segments of all such iterations share one program, the index traced)."""
    steps = self.steps[self.bounds[i]:self.bounds[i + 1]]
    if len(steps) == 1 and steps[0][1] is not None:
      k, it = steps[0]
      if 0 < it < self.t.jaxpr.jaxpr.eqns[k].params["length"] - 1:
        return it
    return None

  def _program(self, i: int, capture: bool, gram: bool, ends: bool, middle: bool):
    """Segment ``i``'s compiled program, ``(flat params, live, token_mask, Gram rows,
    iteration)``; ``middle``: it runs a middle iteration alone (:meth:`_middle_iteration`)."""
    key = (("scan", self.steps[self.bounds[i]][0]) if middle else i, capture, gram, ends)
    if key not in self._programs:
      self._programs[key] = self._compile(i, capture, gram, ends, middle)
    return self._programs[key]

  def _compile(self, i: int, capture: bool, gram: bool, ends: bool, traced_iteration: bool):
    jaxpr = self.t.jaxpr.jaxpr
    shapes = {p: tuple(v.aval.shape) for p, v in zip(self.t.paths, jaxpr.invars)}
    evaluator = capture_lib.Capturing(self.t, shapes, gram, capture)
    lo, hi = self.bounds[i], self.bounds[i + 1]

    @jax.jit
    def segment(flat_params, live, token_mask, rows, iteration):
      env = dict(zip(jaxpr.invars[:self.num_params], flat_params))
      env.update(zip(self.live[i], live))
      state = list(live[len(self.live[i]):])  # a cut scan's carry and stacked outputs
      read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
      evaluator.reset(token_mask, rows)
      for k, it in self.steps[lo:hi]:
        eqn = jaxpr.eqns[k]
        args = [read(v) for v in eqn.invars]
        if it is None:
          env.update(zip(eqn.outvars, evaluator.equation((), k, eqn, args)))
          continue
        p = eqn.params
        nc, nk = p["num_consts"], p["num_carry"]
        if it == 0:
          state = args[nc:nc + nk] + [jnp.zeros(v.aval.shape, v.aval.dtype)
                                      for v in eqn.outvars[nk:]]
        index = iteration if traced_iteration else it
        outs = evaluator.call((), k, 0, p["jaxpr"], args[:nc] + state[:nk]
                              + [x[index] for x in args[nc + nk:]])
        state = outs[:nk] + [y.at[index].set(o) for y, o in zip(state[nk:], outs[nk:])]
        if it == p["length"] - 1:
          env.update(zip(eqn.outvars, state))
          state = []
      if not ends:  # the moments alone: what only feeds the end values is left out
        return [], evaluator.stats
      end = self.live[i + 1] if i + 1 < len(self) else jaxpr.outvars
      return [read(v) for v in end] + state, evaluator.stats
    return segment

  def run(self, i: int, params: tree_utils.Params, live: list, *, gram: bool = False,
          token_mask: Any = None, capture: bool = True, ends: bool = True,
          host: bool = False) -> tuple[list, capture_lib.Moments | None]:
    """Segment ``i`` on one batch's ``live`` values with ``params``: ``(the values live at its
    end — the model's outputs after the last segment; ``[]`` with ``ends=False``, which leaves
    out the work that only they need —, the input moments of its kernels, or None without
    ``capture``)``. A stacked kernel's moments from one iteration of its scan are that layer's
    alone, without the layer axis."""
    if not (capture or ends):
      raise ValueError("A segment run with capture=False and ends=False computes nothing.")
    flat = jax.tree.leaves(params)
    middle = self._middle_iteration(i)
    program = self._program(i, capture, gram, ends, middle is not None)
    rows = capture_lib.gram_rows(token_mask) if capture and gram else None
    values, stats = program(flat, live, token_mask, rows, jnp.int32(middle or 0))
    values = jax.device_get(values) if host else values
    return values, capture_lib.to_moments(self.t, stats) if capture else None

  def outputs(self, params: tree_utils.Params, live: list) -> list:
    """The model's flat outputs from the values live at the start of the last segment."""
    return self.run(len(self) - 1, params, live, capture=False)[0]
