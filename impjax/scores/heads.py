"""Gate scores: head and MLP-unit importance from the gradient of a gate fixed at 1.

A model multiplies each attention head's context (or each MLP hidden unit) by a gate.
``dL/dgate`` at gate = 1 is ``sum_tokens a * dL/da`` — Taylor importance of the whole unit in
one ``jax.grad``. Gates shaped ``(batch, units)`` give one gradient per example, so the score
is the mean over examples of ``|dL/dgate|``. The same gates act as structured masks.

References: Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (head importance
``E_x |dL/dxi_h|``); Molchanov et al. 2019 (group Taylor); Adaptive MLP Pruning (AMP: label-free
loss = entropy of ``softmax(15 * cosine similarities)`` within the batch).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import scores
  >>> act = jnp.array([[1.0, -2.0], [3.0, 0.5]])  # (batch, units)
  >>> loss = lambda g: jnp.sum((act * g["layer"]).sum(-1) ** 2)
  >>> scores.gate_taylor(loss, {"layer": jnp.ones((2, 2))})["layer"].tolist()
  [11.5, 3.75]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def gate_importance(gate_grads: Any) -> Any:
  """Mean over the leading (batch) axis of ``|dL/dgate|`` for every leaf.

  Example:
    >>> gate_importance({"h": jnp.array([[1.0, -2.0], [-3.0, 0.0]])})["h"].tolist()
    [2.0, 1.0]
  """
  return jax.tree.map(lambda g: jnp.mean(jnp.abs(g), axis=0), gate_grads)


def gate_taylor(loss_fn: Callable[[Any], jax.Array], gates: Any) -> Any:
  """:func:`gate_importance` of ``jax.grad(loss_fn)(gates)`` (gates all ones, batch-shaped).

  Example:
    >>> gate_taylor(lambda g: jnp.sum(3.0 * g["h"]), {"h": jnp.ones((2, 1))})["h"].tolist()
    [3.0]
  """
  return gate_importance(jax.grad(loss_fn)(gates))


def entropy_loss(embeddings: jax.Array, temperature: float = 15.0) -> jax.Array:
  """AMP's label-free loss: mean entropy of the rows of ``softmax(t * cos(z_i, z_j))``.

  Example:
    >>> z = jnp.array([[1.0, 0.0], [1.0, 0.0]])  # identical: uniform rows, entropy log 2
    >>> round(float(entropy_loss(z)), 4)
    0.6931
  """
  z = embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
  logp = jax.nn.log_softmax(temperature * z @ z.T, axis=-1)
  return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def entropy_taylor(embed_fn: Callable[[Any], jax.Array], gates: Any,
                   temperature: float = 15.0) -> Any:
  """Label-free unit importance (AMP): :func:`gate_taylor` of :func:`entropy_loss`.

  Args:
    embed_fn: ``gates -> (batch, dim)`` embeddings of one calibration batch.
    gates: a pytree of ``(batch, units)`` ones (e.g. one leaf per MLP layer).
    temperature: the softmax scale (15 in AMP).

  Example:
    >>> x = jnp.array([[1.0, 0.2], [0.3, 1.0], [0.9, 0.8]])
    >>> s = entropy_taylor(lambda g: x * g["u"], {"u": jnp.ones((3, 2))})
    >>> s["u"].shape
    (2,)
  """
  return gate_taylor(lambda g: entropy_loss(embed_fn(g), temperature), gates)
