"""A traced computation evaluated block by block, the values live between blocks carried over.

Layer-sequential one-shot pruning runs block ``i`` on the outputs of blocks ``0 .. i - 1``
already pruned. :class:`Segments` cuts the top level of a model's traced jaxpr where each block's
first kernel is consumed, and evaluates one segment at a time: from the values live at its start
(the hidden states, the inputs still to be read, the residual stream) to those live at its end,
with the params as they are now, capturing the input moments of the segment's kernels. The model
runs once in total instead of once per block; the live values of every calibration batch can
stay on the host between segments (``host=True``). Blocks a single top-level equation holds
together (the layers of a ``scan``, a ``jit`` around several blocks) cannot be cut apart:
:func:`cut` returns ``None`` for them.

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

import functools
from typing import Any, Sequence

import jax
from jax.extend import core

from impjax import tree_utils
from impjax.structure import capture as capture_lib
from impjax.structure import tracing


def _top_level(site: tuple) -> int:
  """The top-level equation a use's site belongs to."""
  ctx, k = site
  return ctx[0][0] if ctx else k


def cut(t: tracing.Trace, blocks: Sequence[Sequence[str]]) -> Segments | None:
  """:class:`Segments` of ``t`` starting where each block's first kernel (of the paths in
  ``blocks``, in order) is consumed, or ``None`` when two blocks share a top-level equation or
  come out of order."""
  first, last = [], []
  for paths in blocks:
    sites = [_top_level(u.site) for u in t.uses if u.path in set(paths) and u.kind == "dot"]
    if not sites:
      return None
    first.append(min(sites))
    last.append(max(sites))
  if any(last[i] >= first[i + 1] for i in range(len(blocks) - 1)):
    return None
  return Segments(t, [0] + first[1:] + [len(t.jaxpr.jaxpr.eqns)])


class Segments:
  """The top-level equations of a traced jaxpr cut at ``bounds`` (``[0, ..., len(eqns)]``):
  segment ``i`` runs equations ``bounds[i] .. bounds[i + 1] - 1``. Build it with :func:`cut`."""

  def __init__(self, t: tracing.Trace, bounds: Sequence[int]):
    self.t, self.bounds = t, list(bounds)
    jaxpr = t.jaxpr.jaxpr
    self.num_params = len(t.paths)
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
    # The values live at a bound: made before it and read at or after it (params excluded).
    self.live = [[v for v, k in defined_at.items() if k < b <= last_use.get(v, -1)]
                 for b in self.bounds]
    self._segment = functools.lru_cache(maxsize=None)(self._compile)

  def __len__(self) -> int:
    return len(self.bounds) - 1

  def start(self, inputs: tuple, *, host: bool = False) -> list:
    """The values live at the start of segment 0 for one batch of ``inputs``."""
    values = dict(zip(self.t.jaxpr.jaxpr.constvars, self.t.jaxpr.consts))
    values.update(zip(self.t.jaxpr.jaxpr.invars[self.num_params:], jax.tree.leaves(inputs)))
    live = [values[v] for v in self.live[0]]
    return jax.device_get(live) if host else live

  def _compile(self, i: int, capture: bool, gram: bool):
    jaxpr = self.t.jaxpr.jaxpr
    shapes = {p: tuple(v.aval.shape) for p, v in zip(self.t.paths, jaxpr.invars)}
    evaluator = capture_lib.Capturing(self.t, shapes, gram, capture)
    lo, hi = self.bounds[i], self.bounds[i + 1]

    @jax.jit
    def segment(flat_params, live, token_mask):
      env = dict(zip(jaxpr.invars[:self.num_params], flat_params))
      env.update(zip(self.live[i], live))
      read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
      evaluator.reset(token_mask)
      for k in range(lo, hi):
        eqn = jaxpr.eqns[k]
        env.update(zip(eqn.outvars, evaluator.equation((), k, eqn, [read(v) for v in eqn.invars])))
      ends = self.live[i + 1] if i + 1 < len(self) else jaxpr.outvars
      return [read(v) for v in ends], evaluator.stats
    return segment

  def run(self, i: int, params: tree_utils.Params, live: list, *, gram: bool = False,
          token_mask: Any = None, capture: bool = True, host: bool = False
          ) -> tuple[list, capture_lib.Moments | None]:
    """Segment ``i`` on one batch's ``live`` values with ``params``: ``(the values live at its
    end — the model's outputs after the last segment —, the input moments of its kernels, or
    None without ``capture``)``."""
    flat = jax.tree.leaves(params)
    ends, stats = self._segment(i, capture, gram)(flat, live, token_mask)
    ends = jax.device_get(ends) if host else ends
    return ends, capture_lib.to_moments(self.t, stats) if capture else None

  def outputs(self, params: tree_utils.Params, live: list) -> list:
    """The model's flat outputs from the values live at the start of the last segment."""
    return self.run(len(self) - 1, params, live, capture=False)[0]
