"""Activation scores: token statistics, Wanda, WINA, attention received, block influence.

Statistics over a calibration set are *sums with a count* (``token_sums``, ``token_gram``,
``block_influence_sums``): they add up over batches (``impjax.estimators.sum``) and average
across devices (``pmean`` scales sums and counts alike), and :func:`means` turns them into
means. Padding tokens are left out through ``mask``.

References: Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
Models" (Wanda: ``|W_ij| * ||X_j||_2``, compared within each output); Chen et al. 2025, "WINA:
Weight Informed Neuron Activation" (``|x_i| * ||W_i,:||_2``); Hu et al. 2016, "Network
Trimming" (APoZ); Men et al. 2024, "ShortGPT" and Layer-Wise Quantization (block influence
``1 - cos(h_in, h_out)``); token importance as attention received (RSQ, ATP).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import scores
  >>> x = jnp.array([[[1.0, -2.0], [3.0, 0.0]]])  # (batch, tokens, features)
  >>> m = scores.means(scores.token_sums(x, jnp.array([[1, 0]])))
  >>> m["abs"].tolist(), m["nonpos"].tolist()
  ([1.0, 2.0], [0.0, 1.0])
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils


def _weights(x: jax.Array, mask: jax.Array | None, feature_axes: int) -> jax.Array:
  """Float token weights broadcastable to ``x`` (ones without ``mask``)."""
  lead = x.shape[:x.ndim - feature_axes]
  if mask is None:
    return jnp.ones(lead, jnp.float32)
  if mask.shape != lead:
    raise ValueError(f"mask shape {mask.shape} does not match the token axes {lead} of an "
                     f"activation of shape {x.shape}.")
  return mask.astype(jnp.float32)


def token_sums(a: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-feature sums over tokens: ``count``, ``abs`` (``|a|``), ``sq`` (``a^2``), ``nonpos``
  (``a <= 0``); :func:`means` gives ``E|a|``, ``E[a^2]`` and APoZ.

  Args:
    a: activations ``(..., features)``.
    mask: ``(...)``, nonzero for real tokens.

  Example:
    >>> token_sums(jnp.array([[1.0], [-3.0]]))["sq"].tolist()
    [10.0]
  """
  w = _weights(a, mask, 1)[..., None]
  a = a.astype(jnp.float32)
  axes = tuple(range(a.ndim - 1))
  return {"count": jnp.sum(w), "abs": jnp.sum(jnp.abs(a) * w, axes),
          "sq": jnp.sum(jnp.square(a) * w, axes), "nonpos": jnp.sum((a <= 0) * w, axes)}


_GRAM_CHUNK = 256
"""Columns per block of :func:`symmetric_product`."""


def symmetric_product(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a.T @ b`` for a product known to be symmetric (``a = w * x``, ``b = x`` with ``w`` a
  weight per row): the columns cut into blocks of about ``_GRAM_CHUNK``, only the blocks on
  and above the diagonal multiplied, the others their transposes (about half the work).

  Example:
    >>> x = jax.random.normal(jax.random.key(0), (8, 600))  # blocks of 200 columns
    >>> bool(jnp.allclose(symmetric_product(x, x), x.T @ x, atol=1e-5))
    True
  """
  c = a.shape[1]
  k = max(1, round(c / _GRAM_CHUNK))
  edges = [c * i // k for i in range(k + 1)]
  part = lambda v, i: v[:, edges[i]:edges[i + 1]]
  upper = {(i, j): part(a, i).T @ part(b, j) for i in range(k) for j in range(i, k)}
  return jnp.block([[upper[i, j] if i <= j else upper[j, i].T for j in range(k)]
                    for i in range(k)])


def token_gram(x: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """``count`` and ``gram = sum_t x_t x_t^T`` over tokens: :func:`means` gives ``E[x x^T]``,
  the layer Hessian of SparseGPT (up to a factor 2).

  Example:
    >>> token_gram(jnp.array([[1.0, 2.0], [0.0, 1.0]]))["gram"].tolist()
    [[1.0, 2.0], [2.0, 5.0]]
  """
  w = _weights(x, mask, 1)
  flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  weighted = flat * w.reshape(-1, 1)
  return {"count": jnp.sum(w), "gram": symmetric_product(weighted, flat)}


def block_influence_sums(h_in: jax.Array, h_out: jax.Array,
                         mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """``count`` and the sum over tokens of ``1 - cos(h_in, h_out)``; :func:`means` gives a
  block's influence (low: the block barely changes its input and is safe to drop).

  Example:
    >>> s = block_influence_sums(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]]))
    >>> means(s)["influence"].tolist()
    1.0
  """
  w = _weights(h_in, mask, 1)
  a, b = h_in.astype(jnp.float32), h_out.astype(jnp.float32)
  cos = jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1),
                                          1e-12)
  return {"count": jnp.sum(w), "influence": jnp.sum((1.0 - cos) * w)}


def means(sums: Any) -> Any:
  """Divides every array of each ``{"count", ...}`` dict by its count (the count is dropped).

  Works on one statistics dict or on any nesting of them (e.g. one per tapped path).

  Example:
    >>> means({"layer": {"count": jnp.float32(4), "sq": jnp.array([8.0])}})["layer"]["sq"].tolist()
    [2.0]
  """
  if isinstance(sums, dict) and "count" in sums:
    count = jnp.maximum(sums["count"], 1e-30)
    return {k: jax.tree.map(lambda x: x / count, v) for k, v in sums.items() if k != "count"}
  if isinstance(sums, dict):
    return {k: means(v) for k, v in sums.items()}
  raise ValueError(f"means expects dicts with a 'count' entry, got {type(sums).__name__}.")


def wanda(params: tree_utils.Params, input_norms: Any) -> Any:
  """Wanda importance ``|W_ij| * ||X_j||``: each kernel row scaled by its input's norm.

  Flax kernels are ``(in, out)``, so ``input_norms`` holds one ``(in,)`` vector per kernel
  (any common scale: Wanda compares weights within each output, e.g. ``sqrt(E[x^2])``).

  Example:
    >>> wanda({"k": jnp.array([[1.0, -2.0], [3.0, 1.0]])}, {"k": jnp.array([2.0, 0.5])})["k"].tolist()
    [[2.0, 4.0], [1.5, 0.5]]
  """
  tree_utils.check_same_structure(params, input_norms, names=("params", "input_norms"),
                                  shapes=False)

  def leaf(path, w, n):
    if np.ndim(n) != 1 or np.shape(w)[:1] != np.shape(n):
      raise ValueError(f"input_norms of leaf '{path}' must have shape ({np.shape(w)[0]},) "
                       f"(the kernel's input axis), got {np.shape(n)}.")
    return jnp.abs(w) * n.reshape((-1,) + (1,) * (w.ndim - 1))
  return tree_utils.map_with_path(leaf, params, input_norms)


def ria(params: tree_utils.Params, input_norms: Any, a: float = 0.5) -> Any:
  """RIA importance: relative importance times activations,
  ``(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_i||^a`` for a Flax kernel ``(in, out)``
  (``i`` its input, ``j`` its output): a weight's share of its output's and of its input's
  total magnitude, scaled by its input's norm to the power ``a``. Compared within each output
  like Wanda.

  Reference: Zhang et al. 2024, "Plug-and-Play: An Efficient Post-training Pruning Method for
  Large Language Models" (RIA, a = 0.5).

  Example:
    >>> k = jnp.array([[1.0, 3.0], [1.0, 1.0]])
    >>> ria({"k": k}, {"k": jnp.array([4.0, 1.0])})["k"].tolist()  # (1/2 + 1/4) * 2 = 1.5
    [[1.5, 3.0], [1.0, 0.75]]
  """
  tree_utils.check_same_structure(params, input_norms, names=("params", "input_norms"),
                                  shapes=False)

  def leaf(path, w, n):
    if np.ndim(w) != 2 or np.shape(n) != np.shape(w)[:1]:
      raise ValueError(f"RIA needs a kernel (in, out) and input_norms (in,) at leaf '{path}', "
                       f"got {np.shape(w)} and {np.shape(n)}.")
    w = jnp.abs(w).astype(jnp.float32)
    tiny = jnp.finfo(jnp.float32).tiny
    relative = (w / jnp.maximum(w.sum(0, keepdims=True), tiny)
                + w / jnp.maximum(w.sum(1, keepdims=True), tiny))
    return relative * (jnp.asarray(n, jnp.float32) ** a)[:, None]
  return tree_utils.map_with_path(leaf, params, input_norms)


def wina(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """WINA per-token input importance ``|x_i| * ||W_i,:||_2`` for a Flax kernel ``(in, out)``.

  Keeping the top inputs of each token (``impjax.select.n_of_m_leaf`` along the last axis)
  gives WINA's training-free dynamic activation sparsity.

  Example:
    >>> wina(jnp.array([[1.0, -2.0]]), jnp.array([[3.0, 4.0], [0.0, 1.0]])).tolist()
    [[5.0, 2.0]]
  """
  if kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
    raise ValueError(f"wina needs x (..., {kernel.shape[0] if kernel.ndim else '?'}) and a 2-D "
                     f"kernel (in, out); got x {x.shape}, kernel {kernel.shape}.")
  return jnp.abs(x) * jnp.linalg.norm(kernel, axis=1)


def attention_received(probs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean attention each key token receives, over heads and real query tokens.

  Args:
    probs: attention probabilities ``(batch, heads, queries, keys)``.
    mask: ``(batch, tokens)``, nonzero for real tokens (queries and keys share it).

  Returns:
    ``(batch, keys)`` token importances; padded keys score 0.

  Example:
    >>> p = jnp.array([[[[0.5, 0.5], [1.0, 0.0]]]])  # one head, two queries
    >>> attention_received(p, jnp.array([[1, 1]])).tolist()
    [[0.75, 0.25]]
  """
  if probs.ndim != 4:
    raise ValueError(f"probs must be (batch, heads, queries, keys), got shape {probs.shape}.")
  w = jnp.ones(probs.shape[:1] + probs.shape[2:3]) if mask is None else mask.astype(jnp.float32)
  total = jnp.einsum("bhqk,bq->bk", probs.astype(jnp.float32), w)
  received = total / (probs.shape[1] * jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0))
  return received if mask is None else received * w
