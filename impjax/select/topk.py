"""Exact top-k selection over a pytree of scores, without sorting or concatenating them.

The k-th smallest score is found by a radix select on the order-preserving ``uint32`` keys of
the float32 scores (two histogram passes of 16-bit digits, each a per-leaf ``bincount`` then a
sum, or a ``psum`` across devices), then ties at the threshold are broken by position (leaf
order, then flat index), so exactly ``k`` are pruned. No score is sorted or gathered.
Masks are ``True`` where a weight is kept.

Reference: global magnitude pruning as in Frankle & Carbin 2019 ("The Lottery Ticket
Hypothesis"); local versus global scopes as compared in Blalock et al. 2020.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import select
  >>> m = select.topk({"a": jnp.array([3.0, 1.0]), "b": jnp.array([2.0, 0.5])}, 0.5)
  >>> m["a"].tolist(), m["b"].tolist()
  ([True, False], [True, False])
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from impjax import tree_utils

Scope = str | Callable[[str], str]


def sortable_keys(x: jax.Array) -> jax.Array:
  """Maps float scores to ``uint32`` keys with the same order (``-0.0`` equals ``0.0``)."""
  x = x.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def num_to_prune(sparsity: Any, total: int) -> jax.Array | int:
  """``round(sparsity * total)``, half up, computed exactly and the same eager and traced.

  ``sparsity`` is read as float32 and stands for every real number that rounds to that
  float32 (a decimal such as ``0.7`` is not exact): while that interval, scaled by ``total``,
  is narrower than half a unit, ties are resolved at its top, so ``0.7 * 5`` and
  ``0.265 * 100`` round up to 4 and 27 as written; for larger totals the float32 value itself
  is rounded, so ``0.5 * 10**8`` is exactly ``5 * 10**7``. Integer
  arithmetic (no float rounding, no fused multiply-add) makes a jitted step prune exactly as
  many units as an eager call, for every ``total`` below ``2**31``; the count never exceeds
  ``total``.
  """
  if not 0 <= total < 2**31:
    raise ValueError(f"Can select among at most 2**31 - 1 units, got {total}.")
  if tree_utils.is_concrete(sparsity):
    s = float(np.float32(sparsity))
    if not s > 0:  # NaN and -0.0 count as 0, like the traced path
      return 0
    fraction, exponent = math.frexp(min(s, 1.0))  # s = (m / 2**24) * 2**exponent
    m, shift = int(fraction * 2**24), 25 - exponent  # s + ulp / 2 = (2m + 1) / 2**shift
    narrow = shift - 1 >= total.bit_length()  # total * ulp / 2 < 1 / 2
    return min(((2 * m + int(narrow)) * total + 2**(shift - 1)) >> shift, total)
  s = jnp.asarray(sparsity, jnp.float32)
  bits = lax.bitcast_convert_type(jnp.where(s > 0, jnp.minimum(s, 1.0), 1.0), jnp.uint32)
  narrow = 150 - (bits >> 23).astype(jnp.int32) >= total.bit_length()
  return jnp.where(narrow, _round_scaled(s, total, 1), _round_scaled(s, total, 0))


def _round_scaled(s: jax.Array, total: int, half_ulp: int) -> jax.Array:
  """Traced :func:`num_to_prune`: ``(2m + half_ulp) * total`` (< 2**56) as two ``uint32``
  words, rounded half up after the shift (``half_ulp=1``: the top of the interval)."""
  u32 = lambda v: jnp.asarray(v, jnp.uint32)  # noqa: E731
  positive = s > 0
  bits = lax.bitcast_convert_type(jnp.where(positive, jnp.minimum(s, 1.0), 1.0), jnp.uint32)
  odd = (((bits & u32(0x7FFFFF)) | u32(0x800000)) << 1) | u32(half_ulp)  # < 2**25
  shift = 151 - (bits >> 23).astype(jnp.int32)  # s + ulp/2 = odd / 2**shift, shift >= 24
  o_hi, o_lo = odd >> 16, odd & u32(0xFFFF)
  t_hi, t_lo = u32(total >> 16), u32(total & 0xFFFF)
  middle = o_hi * t_lo + o_lo * t_hi  # < 2**32
  middle_low = (middle & u32(0xFFFF)) << 16
  low = o_lo * t_lo + middle_low
  high = o_hi * t_hi + (middle >> 16) + (low < middle_low).astype(jnp.uint32)
  # (high * 2**32 + low + 2**(shift - 1)) >> shift, for shift <= 32 and for 33..56.
  small = jnp.clip(shift, 24, 32)
  half = u32(1) << (small - 1).astype(jnp.uint32)
  low_half = low + half
  high_half = high + (low_half < half).astype(jnp.uint32)
  from_pair = jnp.where(
      small == 32, high_half,
      (low_half >> small.astype(jnp.uint32))
      | (high_half << (32 - jnp.minimum(small, 31)).astype(jnp.uint32)))
  large = jnp.clip(shift, 33, 56)
  from_high = (high + (u32(1) << (large - 33).astype(jnp.uint32))) >> (
      large - 32).astype(jnp.uint32)
  count = jnp.where(shift <= 32, from_pair, jnp.where(shift <= 56, from_high, u32(0)))
  return jnp.where(positive, jnp.minimum(count, u32(total)), u32(0)).astype(jnp.int32)


_HALF_BITS = 16
_BINS = 1 << _HALF_BITS
_CHUNK = 1 << 18


def _fold_chunks(x: jax.Array, fn: Callable, init: Any) -> Any:
  """``fn(carry, start, chunk)`` over the flat ``x`` in chunks, so no pass materializes a
  temporary as large as ``x`` (keys and digits are recomputed per chunk)."""
  flat = x.reshape(-1)
  full = flat.size // _CHUNK
  carry = init
  if full:
    carry = lax.fori_loop(
        0, full, lambda i, c: fn(c, i * _CHUNK, lax.dynamic_slice(flat, (i * _CHUNK,),
                                                                 (_CHUNK,))), carry)
  if flat.size % _CHUNK:
    carry = fn(carry, full * _CHUNK, flat[full * _CHUNK:])
  return carry


def _local(x: Any, axis_name: str | None) -> Any:
  """Marks a fresh loop carry as varying across ``axis_name`` (``shard_map`` type checks)."""
  return lax.pcast(x, (axis_name,), to="varying") if axis_name else x


def _histogram(leaves: list[jax.Array], digit: Callable, length: int,
               axis_name: str | None) -> jax.Array:
  """Counts of ``digit(sortable_keys(chunk))`` over all leaves (and devices of ``axis_name``)."""
  def add(counts, _, chunk):
    return counts + jnp.bincount(digit(sortable_keys(chunk)), length=length)
  counts = _local(jnp.zeros((length,), jnp.int32), axis_name)
  for x in leaves:
    counts = _fold_chunks(x, add, counts)
  return lax.psum(counts, axis_name) if axis_name else counts


def _psum(x, axis_name):
  return lax.psum(x, axis_name) if axis_name else x


def _kth_smallest_key(leaves: list[jax.Array], k, axis_name: str | None = None) -> jax.Array:
  """The ``k``-th smallest key (``k >= 1``) by a two-pass radix select on 16-bit digits.

  Pass one histograms the high halves of all keys and finds the bucket holding the k-th key;
  pass two histograms the low halves of the keys in that bucket. Each pass is a local
  ``bincount`` plus, with ``axis_name``, one ``psum`` of 65536 counts.
  """
  high = lambda kk: (kk >> _HALF_BITS).astype(jnp.int32)
  cum_high = jnp.cumsum(_histogram(leaves, high, _BINS, axis_name))
  bucket = jnp.searchsorted(cum_high, k, side="left")
  below = jnp.where(bucket > 0, cum_high[jnp.maximum(bucket - 1, 0)], 0)
  low = lambda kk: jnp.where(high(kk) == bucket, (kk & (_BINS - 1)).astype(jnp.int32), _BINS)
  cum_low = jnp.cumsum(_histogram(leaves, low, _BINS + 1, axis_name)[:_BINS]) + below
  digit = jnp.searchsorted(cum_low, k, side="left")
  return (bucket.astype(jnp.uint32) << _HALF_BITS) | digit.astype(jnp.uint32)


def _ties_before_this_device(count: jax.Array, axis_name: str | None):
  """(ties on earlier devices of ``axis_name``, ties on all devices) for one leaf."""
  if not axis_name:
    return jnp.zeros((), jnp.int32), count
  counts = lax.all_gather(count, axis_name)
  earlier = jnp.arange(counts.shape[0]) < lax.axis_index(axis_name)
  return jnp.sum(jnp.where(earlier, counts, 0)), jnp.sum(counts)


def _keep_breaking_ties(x: jax.Array, threshold, need, first_position,
                        axis_name: str | None) -> jax.Array:
  """Keep-mask of one leaf where ties at ``threshold`` are pruned while their global
  position (``first_position`` + running count in this leaf) is at most ``need``.

  Only the chunk in which the position crosses ``need`` ranks its ties (a ``cumsum``); every
  other chunk prunes all or none of its ties, a plain compare."""
  def write(carry, start, chunk):
    out, seen = carry
    keys = sortable_keys(chunk)
    tie = keys == threshold
    ties_here = jnp.sum(tie, dtype=jnp.int32)

    def ranked():
      position = jnp.cumsum(tie, dtype=jnp.int32) + seen
      return (keys > threshold) | (tie & (position > need))

    keep = lax.cond((seen < need) & (seen + ties_here > need), ranked,
                    lambda: (keys > threshold) | (tie & (seen >= need)))
    return lax.dynamic_update_slice(out, keep, (start,)), seen + ties_here
  out, _ = _fold_chunks(x, write, (_local(jnp.zeros((x.size,), jnp.bool_), axis_name),
                                   first_position))
  return out.reshape(x.shape)


@functools.partial(jax.jit, static_argnames="axis_name")
def prune_lowest(leaves: list[jax.Array], k, axis_name: str | None = None) -> list[jax.Array]:
  """Keep-masks pruning exactly the ``k`` lowest scores across ``leaves`` (ties by position).

  With ``axis_name`` (inside ``shard_map``/``pmap``) each device holds one contiguous block
  of every leaf; counts are summed across devices and ties are broken in the global order
  (leaf, then device, then flat index). Jitted with ``k`` traced, so eager calls compile once
  per leaf shapes. Besides the masks, memory stays within fixed-size chunks.
  """
  if not leaves:
    return []
  threshold = _kth_smallest_key(leaves, jnp.maximum(k, 1), axis_name)

  def count(carry, _, chunk):
    keys = sortable_keys(chunk)
    return (carry[0] + jnp.sum(keys < threshold, dtype=jnp.int32),
            carry[1] + jnp.sum(keys == threshold, dtype=jnp.int32))
  zero = _local(jnp.zeros((), jnp.int32), axis_name)
  counts = [_fold_chunks(x, count, (zero, zero)) for x in leaves]
  need = k - _psum(sum(less for less, _ in counts), axis_name)
  ties = [_ties_before_this_device(equal, axis_name) for _, equal in counts]

  def break_ties():
    out, offset = [], jnp.zeros((), jnp.int32)
    for x, (earlier, total) in zip(leaves, ties):
      out.append(_keep_breaking_ties(x, threshold, need, offset + earlier, axis_name))
      offset = offset + total
    return out

  def prune_all_ties():
    return [sortable_keys(x) > threshold for x in leaves]

  masks = lax.cond(sum(total for _, total in ties) > need, break_ties, prune_all_ties)
  return [m | (k <= 0) for m in masks]


def _scope_name(scope: Scope, path: str) -> str:
  if scope == "global":
    return ""
  if scope == "local":
    return path
  if callable(scope):
    return scope(path)
  raise ValueError(f"scope must be 'global', 'local' or a callable, got {scope!r}.")


def topk(scores: Any, sparsity: Any, *, scope: Scope = "global") -> Any:
  """Keep-masks that prune exactly ``round(sparsity * N)`` lowest scores in each scope.

  Args:
    scores: a pytree of float arrays (empty leaves take no part).
    sparsity: fraction to prune in [0, 1]: a scalar (may be traced), or with
      ``scope="local"`` a pytree of per-leaf fractions matching ``scores``. A concrete value
      outside [0, 1] raises; a traced one is not checked: above 1 prunes everything, NaN and
      values at or below 0 prune nothing.
    scope: ``"global"`` (one budget over all leaves), ``"local"`` (per leaf), or a callable
      mapping a leaf path to a scope name (one budget per scope).

  Returns:
    A bool pytree like ``scores``, ``True`` where kept.

  Under ``jit`` with sharded scores XLA may gather them; :func:`sharded_topk` keeps every
  score on its device.

  Example:
    >>> topk({"w": jnp.array([0.1, 0.4, 0.2, 0.3])}, 0.5, scope="local")["w"].tolist()
    [False, True, False, True]
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(scores)
  paths = [tree_utils.path_str(p) for p, _ in flat]
  leaves = [x for _, x in flat]
  tree_utils.check_finite(scores, what="scores")
  if isinstance(sparsity, (int, float)) or hasattr(sparsity, "shape"):
    tree_utils.check_fraction(sparsity, what="sparsity")
    per_leaf = [sparsity] * len(leaves)
    per_leaf_given = False
  else:
    if scope != "local":
      raise ValueError("A per-leaf sparsity tree needs scope='local'.")
    tree_utils.check_same_structure(scores, sparsity, names=("scores", "sparsity"), shapes=False)
    per_leaf = jax.tree.leaves(sparsity)
    for path, s in zip(paths, per_leaf):
      tree_utils.check_fraction(s, what=f"sparsity of leaf '{path}'")
    per_leaf_given = True

  scopes: dict[str, list[int]] = {}
  for i, path in enumerate(paths):
    scopes.setdefault(path if per_leaf_given else _scope_name(scope, path), []).append(i)
  masks: list[Any] = [None] * len(leaves)
  for members in scopes.values():
    total = int(sum(np.size(leaves[i]) for i in members))
    k = num_to_prune(per_leaf[members[0]], total)
    for i, m in zip(members, prune_lowest([leaves[i] for i in members], k)):
      masks[i] = m
  return jax.tree_util.tree_unflatten(treedef, masks)


def threshold(scores: Any, value: Any) -> Any:
  """Keep-masks ``score > value`` for every leaf.

  Example:
    >>> threshold({"w": jnp.array([0.1, 0.5])}, 0.2)["w"].tolist()
    [False, True]
  """
  tree_utils.check_finite(scores, what="scores")
  return jax.tree.map(lambda s: s > value, scores)


def sharded_topk(scores: Any, sparsity: float, mesh: jax.sharding.Mesh, axis: str) -> Any:
  """Global :func:`topk` of scores sharded along their leading axis over ``mesh`` axis ``axis``.

  Runs :func:`prune_lowest` inside ``shard_map``: each device counts its own rows and only
  histograms (65536 counts, twice) and scalars cross devices; no score is gathered. Masks come
  back sharded like the scores and equal the single-device masks.

  Example:
    >>> import numpy as np
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",))
    >>> sharded_topk({"w": jnp.array([0.1, 0.4, 0.2, 0.3])}, 0.5, mesh, "d")["w"].tolist()
    [False, True, False, True]
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(scores)
  size = mesh.shape[axis]
  for path, x in flat:
    if np.ndim(x) == 0 or np.shape(x)[0] % size:
      raise ValueError(f"Leaf '{tree_utils.path_str(path)}' of shape {np.shape(x)} cannot be "
                       f"sharded along its leading axis over {size} devices of '{axis}'.")
  tree_utils.check_fraction(sparsity, what="sparsity")
  leaves = [x for _, x in flat]
  k = num_to_prune(sparsity, int(sum(np.size(x) for x in leaves)))
  specs = [jax.sharding.PartitionSpec(axis)] * len(leaves)
  select_fn = jax.shard_map(lambda ls: prune_lowest(ls, k, axis_name=axis), mesh=mesh,
                            in_specs=(specs,), out_specs=specs)
  return jax.tree_util.tree_unflatten(treedef, jax.jit(select_fn)(leaves))
