"""Structure: a model's kernel axes and coupled groups, read from its traced computation.

- ``axis_graph``: axis identities merged by union-find, with composite (factored) axes.
- ``tracing``: the walk over a jaxpr, primitive by primitive, that builds the axis graph.
- ``discovery``: :func:`discover`, the kernel axes and coupled groups of a model.
- ``compaction``: :func:`compact_model`, the smaller params and the model's own computation
  re-run at the new widths.
- ``rebuild``: :func:`fit_config`, the user's own config at the compacted widths (so the
  model class itself is rebuilt), found by trying sizes and checking shapes abstractly.
- ``defaults``: path rules and quantization channel axes from the structure.
- ``selection``: unit scores of the groups and the units each layer keeps.
- ``capture``: the inputs' squared sums (and Gram matrices) of every kernel, read by re-running
  the computation (:func:`input_moments`, summed over batches by :func:`batch_moments`), and
  Wanda's importance from them.
- ``ordering``: unit ranks and ordered-width masks over the groups (ordered dropout).
- ``one_shot``: :func:`prune_sequential` (block after block) and :func:`prune_kernels` (one
  pass), one-shot magnitude, Wanda, RIA, DSnoT and SparseGPT (unstructured or N:M) of every
  captured kernel, whatever its form, at one sparsity or OWL's per-block ones
  (:func:`owl_sparsities`).
- ``segments``: the traced computation cut at the blocks and run one segment at a time on the
  values live between them (the hidden states; a scan over the layers cut between its
  iterations), for :func:`prune_sequential`.
- ``unit_taylor``: AMP's label-free entropy-Taylor importance of the groups' units, through
  per-example gates on the kernels that read them.

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import structure
  >>> s = structure.discover(lambda p, x: x @ p["w"], {"w": jnp.ones((4, 3))}, jnp.ones((2, 4)))
  >>> s.kernels["w"]
  KernelAxes(kind='dense', contraction=(0,), output=(1,), layer=None, reads_input=True, writes_output=True)
"""

from impjax.structure.capture import Moments
from impjax.structure.capture import batch_moments
from impjax.structure.capture import input_moments
from impjax.structure.capture import wanda
from impjax.structure.compaction import compact_model
from impjax.structure.defaults import channel_axes
from impjax.structure.defaults import rules
from impjax.structure.defaults import schemes
from impjax.structure.discovery import Group
from impjax.structure.discovery import KernelAxes
from impjax.structure.discovery import Structure
from impjax.structure.discovery import discover
from impjax.structure.one_shot import blocks
from impjax.structure.one_shot import owl_sparsities
from impjax.structure.one_shot import prune_kernels
from impjax.structure.one_shot import prune_sequential
from impjax.structure.rebuild import fit_config
from impjax.structure.ordering import at_width
from impjax.structure.ordering import keep_at_width
from impjax.structure.ordering import unit_ranks
from impjax.structure.ordering import width_masks
from impjax.structure.selection import group_scores
from impjax.structure.selection import keep_units
from impjax.structure.tracing import trace
from impjax.structure.unit_taylor import entropy_taylor_scores

__all__ = ["Group", "KernelAxes", "Moments", "Structure", "at_width", "batch_moments", "blocks",
           "channel_axes", "compact_model", "discover", "entropy_taylor_scores", "fit_config",
           "group_scores", "input_moments", "keep_at_width", "keep_units", "owl_sparsities",
           "prune_kernels", "prune_sequential", "rules", "schemes", "trace", "unit_ranks",
           "wanda", "width_masks"]
