"""Train-step pieces for NNX models held as ``(graphdef, params)``: a jitted train step, the
softmax cross-entropy loss and a whole-split accuracy.

The main job (``launch/train.py``), the benchmarks and the notebooks train through these, so a
loss wrapper (e.g. :func:`impjax.transforms.quantized` for QAT) or an impjax optimizer (e.g.
:func:`impjax.transforms.prune`) drops into the same step.

Example:
  >>> import jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> from impjax import flax as ij_flax
  >>> graphdef, state = nnx.split(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  >>> params, tx = nnx.to_pure_dict(state), optax.sgd(0.1)
  >>> step = ij_flax.make_train_step(graphdef, tx)
  >>> batch = {"image": jnp.ones((4, 2)), "label": jnp.array([0, 1, 0, 1])}
  >>> params, opt_state, metrics = step(params, tx.init(params), batch)
  >>> sorted(metrics)
  ['accuracy', 'loss']
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from impjax.transforms import masking


def cross_entropy(graphdef, params, batch):
  """Mean softmax cross-entropy of the merged model on ``batch``, and its logits."""
  logits = nnx.merge(graphdef, params)(batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, logits


def make_train_step(graphdef, tx, loss_fn=cross_entropy, *, straight_through: bool = False):
  """A jitted ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

  ``loss_fn(graphdef, params, batch) -> (loss, logits)`` defaults to :func:`cross_entropy`;
  pass a wrapped one to train otherwise (e.g. quantization-aware with
  ``impjax.transforms.quantized(cross_entropy, bits, argnum=1)``). ``straight_through``: the
  loss reads the weights through :func:`impjax.transforms.straight_through` with the masks of
  the ``prune(..., straight_through=True)`` state inside ``opt_state`` (masked forward, dense
  gradient).
  """
  def forward_params(params, opt_state):
    if not straight_through:
      return params
    return masking.straight_through(params, masking.current_masks(opt_state, params))

  @jax.jit
  def train_step(params, opt_state, batch):
    (loss, logits), grads = jax.value_and_grad(
        lambda p: loss_fn(graphdef, forward_params(p, opt_state), batch), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return params, opt_state, {"loss": loss, "accuracy": accuracy}
  return train_step


def make_accuracy_fn(graphdef, chunk: int = 1024):
  """``(params, data) -> accuracy`` over a whole split, in jitted chunks.

  Example:
    >>> import numpy as np
    >>> graphdef, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> data = {"image": np.zeros((5, 2), np.float32), "label": np.zeros(5, np.int32)}
    >>> make_accuracy_fn(graphdef, chunk=2)(nnx.to_pure_dict(state), data)  # zero logits: class 0
    1.0
  """
  @jax.jit
  def correct(params, images, labels):
    logits = nnx.merge(graphdef, params)(images)
    return jnp.sum(jnp.argmax(logits, -1) == labels)

  def accuracy(params, split):
    n = len(split["label"])
    total = sum(int(correct(params, split["image"][i:i + chunk], split["label"][i:i + chunk]))
                for i in range(0, n, chunk))
    return total / n
  return accuracy
