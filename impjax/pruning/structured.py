"""Structured pruning of coupled units: MLP hidden units and attention heads, AMP search.

Coupled groups (:class:`impjax.groups.Coupled`, e.g. MiniLM's from
:func:`impjax.models.minilm.encoder_groups`) reduce element importances to one score per unit
(:func:`impjax.groups.coupled_scores`); kept units expand back to element masks
(:func:`impjax.groups.coupled_masks`), and :func:`impjax.pruning.compact` slices them out for
real.

:func:`amp_search` chooses how many units each layer keeps (Adaptive MLP Pruning): layers
from last to first, a binary search of ``probes`` steps on the number of kept units (in
importance order), accepting the smallest count whose quality stays within its share of the
tolerance, given the layers already decided.

References: Fang et al. 2023, "DepGraph" (coupled groups); Michel et al. 2019 (head pruning);
Adaptive MLP Pruning (AMP: importance-ordered units, per-layer binary search).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import pruning
  >>> pruning.keep_top(jnp.array([0.3, 0.1, 0.9]), 1).tolist()
  [False, False, True]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from flax import nnx
import jax
import jax.numpy as jnp

from impjax import scores
from impjax import select
from impjax import tree_utils
from impjax.flax import capture


def keep_top(scores: jax.Array, k: int) -> jax.Array:
  """Bool mask keeping exactly the ``k`` highest-scoring units (ties: later units kept).

  Example:
    >>> keep_top(jnp.array([0.3, 0.1, 0.9]), 2).tolist()
    [True, False, True]
  """
  return select.n_of_m_leaf(scores, int(k), scores.shape[0], axis=0)


def search_keep(accept: Callable[[int], bool], units: int, probes: int = 6) -> int:
  """Smallest ``k`` in ``[0, units]`` that ``accept`` takes, by ``probes`` bisection steps
  (``units`` itself is assumed acceptable; the answer is exact when ``2^probes > units``).

  Example:
    >>> search_keep(lambda k: k >= 37, 100, probes=7)
    37
  """
  lo, hi = 0, units
  for _ in range(probes):
    if lo >= hi:
      break
    mid = (lo + hi) // 2
    if accept(mid):
      hi = mid
    else:
      lo = mid + 1
  return hi


def amp_search(scores: dict[str, jax.Array], quality: Callable[[dict[str, jax.Array]], float],
               tolerance: float, probes: int = 6) -> dict[str, jax.Array]:
  """Per-layer keep masks (AMP): last layer first, each keeps the fewest top-scoring units
  whose ``quality`` stays at least ``q_full - tolerance * j / L`` after its ``j``-th decision.

  Args:
    scores: unit scores per group name, in layer order.
    quality: ``{name: keep mask} -> float`` (higher is better; e.g. fidelity to the dense
      model on calibration text); names absent from the dict keep every unit.
    tolerance: total quality drop allowed once every layer is decided.
    probes: binary-search steps per layer (6 in AMP).

  Returns:
    ``{name: bool keep mask}`` for every name of ``scores``.

  Example:
    >>> s = {"a": jnp.arange(4.0), "b": jnp.arange(4.0)}
    >>> q = lambda keep: 1.0 - 0.01 * sum(int((~m).sum()) for m in keep.values())
    >>> {k: int(v.sum()) for k, v in amp_search(s, q, tolerance=0.055, probes=3).items()}
    {'a': 1, 'b': 2}
  """
  tree_utils.check_fraction(tolerance, what="tolerance")
  names = list(scores)
  full = quality({})
  keep: dict[str, jax.Array] = {}
  for j, name in enumerate(reversed(names), start=1):
    floor = full - tolerance * j / len(names)
    accept = lambda k, name=name, floor=floor: quality(
        {**keep, name: keep_top(scores[name], k)}) >= floor
    keep[name] = keep_top(scores[name], search_keep(accept, scores[name].shape[0], probes))
  return {name: keep[name] for name in names}


def entropy_taylor_scores(model: Any, batches: Iterable[dict], kind: str = "mlp", *,
                          temperature: float = 15.0, progress: bool = True
                          ) -> dict[str, jax.Array]:
  """AMP's label-free unit importance of an encoder, averaged over calibration batches.

  Per batch, :func:`impjax.scores.entropy_taylor` of the sentence embeddings with respect to
  batch-shaped gates on every layer's MLP units (``kind="mlp"``) or heads (``"heads"``);
  batches are weighted equally (use batches of one size).

  Args:
    model: an encoder whose ``encode(ids, mask, unit_gates=..., head_gates=...)`` takes
      per-layer gates (:class:`impjax.models.MiniLM`).
    batches: calibration batches ``{"ids", "mask"}``.
    kind: ``"mlp"`` or ``"heads"``.
    temperature: the softmax scale of the entropy loss.
    progress: show a progress bar.

  Returns:
    ``{"layers/i/mlp" (or heads): scores}`` keyed like :func:`impjax.models.minilm.encoder_groups`.

  Example:
    >>> from impjax.models import minilm
    >>> c = minilm.MiniLMConfig(vocab_size=9, hidden_size=4, num_heads=(2,), head_dim=2,
    ...                         intermediate_sizes=(6,), max_position=4)
    >>> batch = {"ids": jnp.array([[1, 2, 3], [4, 5, 0]]), "mask": jnp.array([[1, 1, 1], [1, 1, 0]])}
    >>> s = entropy_taylor_scores(minilm.MiniLM(c, rngs=nnx.Rngs(0)), [batch], "heads",
    ...                           progress=False)
    >>> s["layers/0/heads"].shape
    (2,)
  """
  if kind not in ("mlp", "heads"):
    raise ValueError(f"kind must be 'mlp' or 'heads', got {kind!r}.")
  config = model.config
  widths = config.intermediate_sizes if kind == "mlp" else config.num_heads
  graphdef, state = nnx.split(model)

  def observe(state, batch):
    encoder = nnx.merge(graphdef, state)
    rows = batch["ids"].shape[0]
    gates = [jnp.ones((rows, w)) for w in widths]
    key = "unit_gates" if kind == "mlp" else "head_gates"
    embed = lambda g: encoder.encode(batch["ids"], batch["mask"], **{key: g})
    return {"count": jnp.float32(1), "scores": scores.entropy_taylor(embed, gates, temperature)}

  batches = list(batches)
  mean = scores.means(capture.accumulate_sums(observe, state, batches, total=len(batches),
                                        progress=progress))["scores"]
  return {f"layers/{i}/{kind}": s for i, s in enumerate(mean)}
