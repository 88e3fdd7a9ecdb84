"""Activation capture: tap intermediates of Flax modules and stream statistics over them.

Models mark what can be observed with :func:`tap` (an ``nnx.Module.sow`` that is a no-op
unless ``nnx.capture`` is recording, so plain, jitted and differentiated calls stay pure).
:func:`intermediates` runs a function under ``nnx.capture`` and returns what was tapped as a
flat ``{path: array}`` dict; :func:`accumulate_sums` streams a statistic of it over calibration
batches, jitted, accumulated by :func:`impjax.estimators.sum` (:data:`SUMS`), with a
progress bar. Statistics are sums with a ``count`` leaf (:func:`impjax.scores.token_sums`), so
a mean is the same whether it was accumulated in one batch, in many, or across devices
(``axis_name``: ``pmean`` scales sums and counts alike).

Reference: the calibration passes of Wanda (Sun et al. 2024, "A Simple and Effective Pruning
Approach for Large Language Models") and SparseGPT (Frantar & Alistarh 2023).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> class Net(nnx.Module):
  ...   def __init__(self):
  ...     self.dense = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  ...   def __call__(self, x):
  ...     tap(self.dense, "inputs", x)
  ...     return self.dense(x)
  >>> out, acts = intermediates(lambda m, x: m(x), Net(), jnp.ones((3, 2)))
  >>> sorted(acts), acts["dense/inputs"].shape
  (['dense/inputs'], (3, 2))
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

from flax import nnx
import jax
from tqdm import tqdm

from impjax import estimators
from impjax import tree_utils


def tap(module: nnx.Module, name: str, value: Any) -> None:
  """Sows ``value`` as ``module``'s ``name`` while ``nnx.capture`` records it; else nothing.

  A module called several times in one capture keeps its last value.

  Example:
    >>> import jax.numpy as jnp
    >>> m = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    >>> tap(m, "x", jnp.ones(1))  # not recording: the module is left unchanged
    >>> hasattr(m, "x")
    False
  """
  if hasattr(module, "__captures__"):  # set by nnx.capture on every module it records
    module.sow(nnx.Intermediate, name, value, reduce_fn=lambda _, v: v, init_fn=lambda: None)


def intermediates(fn: Callable[..., Any], module: nnx.Module, *args, **kwargs
                  ) -> tuple[Any, dict[str, Any]]:
  """``(fn(module, *args), {path: tapped value})``, the paths relative to ``module``.

  Example:
    >>> import jax.numpy as jnp
    >>> class Double(nnx.Module):
    ...   def __call__(self, x):
    ...     tap(self, "outputs", 2 * x)
    ...     return 2 * x
    >>> intermediates(lambda m, x: m(x), Double(), jnp.ones(1))[1]["outputs"].tolist()
    [2.0]
  """
  out, state = nnx.capture(fn, nnx.Intermediate)(module, *args, **kwargs)
  flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
  return out, {tree_utils.path_str(p): v for p, v in flat}


def accumulate_sums(observe: Callable[[Any, Any], Any], variables: Any, batches: Iterable[Any], *,
              total: int | None = None, progress: bool = True) -> Any:
  """Sums ``observe(variables, batch)`` (a tree of per-batch sums) over ``batches``, jitted.

  ``observe`` usually runs a model under :func:`intermediates` and reduces what was tapped with
  sum statistics such as :func:`impjax.scores.token_sums` (divide by their ``count`` after).
  ``variables`` (the model's weights) are passed to the jitted step as arguments, never baked
  in as constants. ``observe`` is a static argument of the step: equal (hashable) observers
  share one compilation across calls. The sums accumulate in :func:`impjax.estimators.sum`; to
  average across devices call its ``update`` with ``axis_name`` inside ``pmap``/``shard_map``.

  Args:
    observe: ``(variables, batch) -> tree of float sums``, hashable.
    variables: a pytree passed unchanged to every ``observe`` call.
    batches: an iterable of batches (at least one).
    total: number of batches, for the progress bar.
    progress: show a progress bar.

  Example:
    >>> import jax.numpy as jnp
    >>> observe = lambda w, b: {"sum": (w * b).sum(), "count": jnp.float32(b.size)}
    >>> sums = accumulate_sums(observe, 2.0, [jnp.ones(2), jnp.ones(3)], progress=False)
    >>> sums["sum"].tolist(), sums["count"].tolist()
    (10.0, 5.0)
  """
  batches = iter(batches)
  first = next(batches, None)
  if first is None:
    raise ValueError("accumulate_sums got no batches.")
  state = SUMS.init(jax.eval_shape(observe, variables, first))
  for batch in tqdm(itertools.chain([first], batches), total=total, desc="accumulate",
                    disable=not progress):
    state = _accumulate(observe, state, variables, batch)
  return state.value


SUMS = estimators.sum(lambda _, sums: sums)
"""The estimator :func:`accumulate_sums` accumulates with: ``update(state, None, sums, axis_name)``."""


@jax.jit(static_argnums=0)
def _accumulate(observe, state, variables, batch):
  return SUMS.update(state, None, observe(variables, batch))[1]
