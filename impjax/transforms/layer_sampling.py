"""Layer-sampled fine-tuning: a train step that updates only the sampled layers of a stack.

:func:`layer_sampling` turns ``loss_fn(params, *args, run=...)``, the stack's ``block_fn`` and
an optax optimizer into a jit-able train step. Every step the parameters outside the stack
(embeddings, head, ...) and the ``gamma`` active layers are trained (only the active layers
with ``rest="frozen"``); the other layers are constants. Layers held one module each (an
``nnx.List``, e.g. MiniLM's ``params["layers"]``) are stacked once with
:func:`impjax.transforms.layer_stack.stack_layers`; the hidden state passed through ``run``
may be a pytree such as ``(hidden, attention_mask)``
(``benchmarks/quality/minilm_layer_sampling.py``). Each step gathers the active layers from the
stack, differentiates with respect to them only, and scatters them back (``gamma`` rows; in
place when the state is donated). What this saves under JAX's static shapes:

* **Backward compute**: frozen layers run :func:`impjax.transforms.layer_stack.run_sampled`'s frozen
  ``cond`` branch, which computes the activation gradient but no weight gradient (roughly
  half a layer's backward FLOPs; layers below every trained one still need ``dL/dh`` because
  the embeddings always train).
* **Gradient memory**: the gradient tree holds the active layers only (``gamma`` of ``L``).
* **Optimizer memory**: with ``optimizer_state="active"`` (default) the optimizer state exists
  for the active layers only; when the sampler picks new layers their state starts fresh
  (``tx.init``, with its own step count, so Adam's bias correction stays right). With
  ``"all"`` a per-layer state is kept for every layer and gathered/scattered with it (no
  optimizer-memory saving; for samplers that resample every step, such as IST).
* **Not saved**: the forward pass and activation memory (the ``cond`` keeps the trained
  branch's residuals for every layer). XLA also keeps per-layer temporaries that full
  fine-tuning fuses away: a copy of each frozen layer's weights passed into its ``cond`` and a
  layer-sized weight cotangent per ``cond`` (zeros for frozen layers), about one stack's worth
  in all, so the step's total buffers shrink less than the gradient and optimizer state do
  (``benchmarks/quality/dropout_ordering.py`` measures both).

The active layers' optimizer runs per layer (``jax.vmap(tx.update)``), which is exact for
element-wise optimizers (Adam, SGD, ...); global-norm clipping would clip per layer. Nothing
recompiles when the active set changes: ``idx`` is data and ``gamma`` is fixed.

Reference: Pan et al. 2024, "LISA: Layerwise Importance Sampling for Memory-Efficient Large
Language Model Fine-Tuning" (LMFlow keeps optimizer state for re-frozen layers; here it is
dropped); Yao et al. 2024 (IST).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from impjax import transforms
  >>> params = {"blocks": {"w": jnp.ones((4, 2))}, "head": jnp.ones(2)}
  >>> block = lambda p, h: h * p["w"]
  >>> loss = lambda p, x, run: jnp.sum(run(x) * p["head"])
  >>> ls = transforms.layer_sampling(loss, block, optax.sgd(0.1), transforms.lisa(4, gamma=1))
  >>> state = ls.init(params, jax.random.key(0))
  >>> state, metrics = jax.jit(ls.step)(state, jnp.ones(2))
  >>> changed = state.params["blocks"]["w"][:, 0] != 1.0
  >>> int(changed.sum()), state.layer_opt_state  # sgd keeps no state; 1 layer trained
  (1, (EmptyState(), EmptyState()))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import optax

from impjax import tree_utils
from impjax.transforms import layer_stack
from impjax.transforms.layer_samplers import LayerSampler


class LayerSamplingState(NamedTuple):
  """State of :func:`layer_sampling`.

  Attributes:
    count: steps taken (int32).
    params: every parameter, the stack included (always current).
    opt_state: the optimizer state of the parameters outside the stack.
    layer_opt_state: per-layer optimizer states (leading axis: ``gamma`` active layers, or
      all layers with ``optimizer_state="all"``).
    sampler_state: the sampler's state; ``sampler_state.idx`` are the active layers.
    skipped_nonfinite: steps whose gradients were not all finite and so changed nothing else
      in this state, ``count`` included (int32).
  """
  count: jax.Array
  params: tree_utils.Params
  opt_state: Any
  layer_opt_state: Any
  sampler_state: Any
  skipped_nonfinite: jax.Array


class LayerSampling(NamedTuple):
  """``init(params, key) -> state`` and ``step(state, *args, **kwargs) -> (state, metrics)``."""
  init: Callable[..., LayerSamplingState]
  step: Callable[..., tuple[LayerSamplingState, dict]]


def layer_sampling(loss_fn: Callable[..., Any], block_fn: layer_stack.BlockFn,
                   tx: optax.GradientTransformation, sampler: LayerSampler, *,
                   layers: str = "blocks", optimizer_state: str = "active",
                   rest: str = "train", has_aux: bool = False) -> LayerSampling:
  """A train step that trains everything outside the stack plus the sampled layers.

  Args:
    loss_fn: ``loss_fn(params, *args, run=run, **kwargs)``; the model must send its hidden
      state through ``run(h)`` instead of its own pass over the stack.
    block_fn: ``(layer_params, h) -> h`` of one layer of the stack.
    tx: the optimizer (one instance serves the rest and, per layer, the active layers).
    sampler: :func:`impjax.transforms.lisa`, :func:`impjax.transforms.ist` or any
      :class:`impjax.transforms.LayerSampler`.
    layers: path of the stacked layers in the params (``"blocks"``, ``"encoder/layers"``).
    optimizer_state: ``"active"`` (state for the active layers only, fresh for newly
      sampled ones) or ``"all"`` (state for every layer).
    rest: ``"train"`` (LISA's rule: the parameters outside the stack train every step) or
      ``"frozen"`` (only the sampled layers train: no gradient and no optimizer state for the
      rest, whose ``opt_state`` is ``()``).
    has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` goes into the metrics.

  Returns:
    A :class:`LayerSampling`.
  """
  if optimizer_state not in ("active", "all"):
    raise ValueError(f"optimizer_state must be 'active' or 'all', got {optimizer_state!r}.")
  if rest not in ("train", "frozen"):
    raise ValueError(f"rest must be 'train' or 'frozen', got {rest!r}.")
  keep_all, train_rest = optimizer_state == "all", rest == "train"

  def split(params):
    return tree_utils.set_path(params, layers, None), tree_utils.get_path(params, layers)

  def init(params, key):
    rest, stack = split(params)
    depth = layer_stack.num_layers(stack)
    if sampler.num_layers is not None and sampler.num_layers != depth:
      raise ValueError(f"The sampler draws from {sampler.num_layers} layers, but the stack at "
                       f"'{layers}' has {depth}.")
    sampler_state = sampler.init(key)
    per_layer = stack if keep_all else layer_stack.gather(stack, sampler_state.idx)
    return LayerSamplingState(count=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(rest) if train_rest else (),
                              layer_opt_state=jax.vmap(tx.init)(per_layer),
                              sampler_state=sampler_state,
                              skipped_nonfinite=jnp.zeros((), jnp.int32))

  def step(state, *args, **kwargs):
    rest, stack = split(state.params)
    idx = state.sampler_state.idx
    active = layer_stack.gather(stack, idx)

    def loss_of(rest, active):
      run = functools.partial(layer_stack.run_sampled, block_fn, active, stack, idx)
      full = tree_utils.set_path(rest, layers, lax.stop_gradient(stack))
      return loss_fn(full, *args, run=run, **kwargs)

    if train_rest:
      value, (g_rest, g_active) = jax.value_and_grad(loss_of, argnums=(0, 1),
                                                     has_aux=has_aux)(rest, active)
      updates, opt_state = tx.update(g_rest, state.opt_state, rest)
      rest = optax.apply_updates(rest, updates)
    else:
      value, g_active = jax.value_and_grad(loss_of, argnums=1, has_aux=has_aux)(rest, active)
      opt_state = state.opt_state
    loss, aux = value if has_aux else (value, None)
    layer_opt = (layer_stack.gather(state.layer_opt_state, idx) if keep_all
                 else state.layer_opt_state)
    updates, layer_opt = jax.vmap(tx.update)(g_active, layer_opt, active)
    stack = layer_stack.scatter(stack, optax.apply_updates(active, updates), idx)

    def evaluate(keep):
      run = functools.partial(layer_stack.run_layers, block_fn, stack, keep=keep)
      out = loss_fn(tree_utils.set_path(rest, layers, stack), *args, run=run, **kwargs)
      return out[0] if has_aux else out

    sampler_state = sampler.update(state.sampler_state, evaluate)
    if keep_all:
      layer_opt_state = layer_stack.scatter(state.layer_opt_state, layer_opt, idx)
    else:  # newly sampled layers start with a fresh state
      changed = jnp.any(sampler_state.idx != idx)
      fresh = jax.vmap(tx.init)(layer_stack.gather(stack, sampler_state.idx))
      layer_opt_state = jax.tree.map(lambda f, o: jnp.where(changed, f, o), fresh, layer_opt)
    metrics = {"loss": loss} if aux is None else {"loss": loss, "aux": aux}
    new = LayerSamplingState(state.count + 1, tree_utils.set_path(rest, layers, stack),
                             opt_state, layer_opt_state, sampler_state, state.skipped_nonfinite)
    # A step with non-finite gradients applies nothing: the whole state stays as it was.
    finite = tree_utils.all_finite((g_rest, g_active) if train_rest else g_active)
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return kept._replace(skipped_nonfinite=state.skipped_nonfinite
                         + jnp.logical_not(finite).astype(jnp.int32)), metrics

  return LayerSampling(init, step)
