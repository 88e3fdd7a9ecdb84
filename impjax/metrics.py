"""Metrics of a pruned or quantized model against its dense self: embedding fidelity,
retrieval hits and top-1, McNemar's paired test, and the retrieval task's contrastive loss.

Reference: McNemar 1947 (paired test); the in-batch-negatives loss of sentence-transformers'
``MultipleNegativesRankingLoss`` (Henderson et al. 2017).

Example:
  >>> import numpy as np
  >>> from impjax import metrics
  >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
  >>> metrics.retrieval_top1(q, q), metrics.fidelity(q, q)
  (1.0, 1.0)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def fidelity(embeddings: np.ndarray, reference: np.ndarray) -> float:
  """Mean cosine similarity of each embedding to the reference (dense) model's embedding.

  Example:
    >>> fidelity(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    0.5
  """
  a = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
  b = reference / np.linalg.norm(reference, axis=-1, keepdims=True)
  return float(np.mean(np.sum(a * b, axis=-1)))


def retrieval_hits(query_embeddings: np.ndarray, passage_embeddings: np.ndarray) -> np.ndarray:
  """Per query, whether its most cosine-similar passage is its own (same index), as bools.

  Ties go to the lower passage index.

  Example:
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> retrieval_hits(q, np.array([[1.0, 0.0], [1.0, 0.0]])).tolist()  # query 1: a tie
    [True, False]
  """
  q = query_embeddings / np.linalg.norm(query_embeddings, axis=-1, keepdims=True)
  p = passage_embeddings / np.linalg.norm(passage_embeddings, axis=-1, keepdims=True)
  return np.argmax(q @ p.T, axis=1) == np.arange(len(q))


def retrieval_top1(query_embeddings: np.ndarray, passage_embeddings: np.ndarray) -> float:
  """Fraction of queries whose most cosine-similar passage is their own (:func:`retrieval_hits`).

  Example:
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> retrieval_top1(q, np.array([[1.0, 0.0], [1.0, 0.0]]))
    0.5
  """
  return float(np.mean(retrieval_hits(query_embeddings, passage_embeddings)))


def mcnemar(hits_a: np.ndarray, hits_b: np.ndarray) -> dict:
  """McNemar's exact test of two models' hits on the same queries.

  Only the discordant queries count: ``a_only`` (hit by ``a`` alone) and ``b_only``. Under the
  null of equal accuracy each is a fair coin flip, so the two-sided p-value is
  ``min(1, 2 * P[Binomial(n, 1/2) <= min(a_only, b_only)])`` with ``n = a_only + b_only``.

  Reference: McNemar 1947, "Note on the sampling error of the difference between correlated
  proportions or percentages".

  Example:
    >>> mcnemar(np.array([True, False, False]), np.array([False, True, True]))
    {'a_only': 1, 'b_only': 2, 'p_value': 1.0}
  """
  a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"mcnemar needs two 1-d hit arrays of one shape, got {a.shape} and "
                     f"{b.shape}.")
  a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
  n = a_only + b_only
  tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2.0 ** n
  return {"a_only": a_only, "b_only": b_only, "p_value": float(min(1.0, 2.0 * tail))}


def contrastive_loss(query_embeddings, passage_embeddings, scale: float = 20.0):
  """The retrieval task's supervised loss: cross-entropy of ``scale * cos(q_i, p_j)`` over the
  passages of the batch, the label of query ``i`` being passage ``i`` (in-batch negatives, as
  sentence-transformers' ``MultipleNegativesRankingLoss``).

  Example:
    >>> q = jnp.eye(2)
    >>> float(contrastive_loss(q, q)) < 1e-6  # log(1 + e^-20)
    True
  """
  q = query_embeddings / jnp.linalg.norm(query_embeddings, axis=-1, keepdims=True)
  p = passage_embeddings / jnp.linalg.norm(passage_embeddings, axis=-1, keepdims=True)
  logp = jax.nn.log_softmax(scale * q @ p.T, axis=-1)
  return -jnp.mean(jnp.diagonal(logp))
