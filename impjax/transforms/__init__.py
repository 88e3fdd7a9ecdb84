"""Transforms: the acts that consume importance, as optax optimizers and function transforms.

- ``masking``: :func:`prune` wraps an optax optimizer and keeps a schedule-driven,
  importance-selected sparsity through training (masks in its :class:`PruneState`);
  :func:`apply_masks`, :func:`current_masks` and :func:`sparsity_report` read and apply them;
  :func:`hold_masks` fine-tunes with given (one-shot) masks held;
  ``straight_through=True`` with :func:`straight_through` in the loss trains straight-through
  (STE, SR-STE).
- ``sparse_training``: :func:`sparse_training`, sparse from the first step with RigL, SET or
  static masks at uniform or ERK per-leaf counts.
- ``targeted_dropout``: :func:`targeted_dropout`, dropout on the least important units.
- ``ordered_dropout``: :func:`ordered_dropout` with :func:`fjord_width` / :func:`nested_width`
  widths over ranks from :func:`index_ranks` or :func:`importance_order`; :func:`at_width`
  and :func:`width_masks` evaluate a width.
- ``layer_drop``: :func:`layer_drop`, importance-weighted LayerDrop.
- ``layer_stack``: a stack of same-shaped layers (:func:`stack_layers`, :func:`run_layers`,
  gather/scatter and the sampled run that layer sampling uses).
- ``layer_samplers`` and ``layer_sampling``: :func:`layer_sampling` trains the layers a
  :class:`LayerSampler` (:func:`lisa`, :func:`ist`) picks.
- ``fake_quant`` and ``qat``: :func:`fake_quant` of a params tree and :func:`quantized`, a
  loss at fake-quantized params (QAT); the numerics are in :mod:`impjax.quantization`.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from impjax import schedules, transforms
  >>> params = {"d": {"kernel": jnp.arange(1.0, 5.0).reshape(2, 2)}}
  >>> tx = transforms.prune(optax.sgd(0.1), schedules.one_shot(0.5), "magnitude")
  >>> state = tx.init(params)
  >>> _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  >>> transforms.current_masks(state, params)["d"]["kernel"].tolist()
  [[False, False], [True, True]]
"""

from impjax.transforms.fake_quant import fake_quant
from impjax.transforms.layer_drop import layer_drop
from impjax.transforms.layer_samplers import LayerSampler
from impjax.transforms.layer_samplers import ist
from impjax.transforms.layer_samplers import lisa
from impjax.transforms.layer_sampling import LayerSampling
from impjax.transforms.layer_sampling import LayerSamplingState
from impjax.transforms.layer_sampling import layer_sampling
from impjax.transforms.layer_stack import run_layers
from impjax.transforms.layer_stack import stack_layers
from impjax.transforms.layer_stack import unstack_layers
from impjax.transforms.masking import PruneState
from impjax.transforms.masking import apply_masks
from impjax.transforms.masking import current_masks
from impjax.transforms.masking import hold_masks
from impjax.transforms.masking import prune
from impjax.transforms.masking import sparsity_report
from impjax.transforms.masking import straight_through
from impjax.transforms.ordered_dropout import ImportanceOrderState
from impjax.transforms.ordered_dropout import at_width
from impjax.transforms.ordered_dropout import fjord_width
from impjax.transforms.ordered_dropout import importance_order
from impjax.transforms.ordered_dropout import index_ranks
from impjax.transforms.ordered_dropout import nested_width
from impjax.transforms.ordered_dropout import ordered_dropout
from impjax.transforms.ordered_dropout import width_masks
from impjax.transforms.qat import quantized
from impjax.transforms.sparse_training import sparse_training
from impjax.transforms.targeted_dropout import targeted_dropout

__all__ = [
    "ImportanceOrderState",
    "LayerSampler",
    "LayerSampling",
    "LayerSamplingState",
    "PruneState",
    "apply_masks",
    "at_width",
    "current_masks",
    "fake_quant",
    "fjord_width",
    "hold_masks",
    "importance_order",
    "index_ranks",
    "ist",
    "layer_drop",
    "layer_sampling",
    "lisa",
    "nested_width",
    "ordered_dropout",
    "prune",
    "quantized",
    "run_layers",
    "sparse_training",
    "sparsity_report",
    "stack_layers",
    "straight_through",
    "targeted_dropout",
    "unstack_layers",
    "width_masks",
]
