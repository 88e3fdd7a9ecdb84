"""MiniLM's MLP-unit and head groups, read from its computation, and its compaction.

:func:`encoder_groups` discovers the coupled groups of a :class:`MiniLM` of any config
(:func:`impjax.structure.discover` on abstract params and inputs: nothing is allocated) and
names them by layer: an MLP hidden unit spans a column of ``W_in``, its bias entry and a row of
``W_out``; an attention head spans ``head_dim`` columns of the query, key and value kernels (and
biases) and ``head_dim`` rows of the output kernel. :func:`compact_encoder` slices dropped
units and heads out of the arrays (:func:`impjax.pruning.compact`) and rebuilds the smaller
encoder with its config.

Reference: Fang et al. 2023, "DepGraph" (coupled groups); Michel et al. 2019 (head pruning).

Example:
  >>> from impjax.models import minilm
  >>> g = minilm.encoder_groups(minilm.MiniLMConfig())
  >>> len(g), sorted((m.path, m.axis, m.inner) for m in g["layers/5/mlp"].members)[0]
  (12, ('layers/5/intermediate/bias', 0, 1))
"""

from __future__ import annotations

import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from impjax import groups
from impjax import pruning
from impjax import structure
from impjax.models.minilm import loading
from impjax.models.minilm import model as model_lib

_KINDS = {"hidden": "mlp", "heads": "heads"}


def encoder_groups(config: model_lib.MiniLMConfig) -> dict[str, groups.Coupled]:
  """``{"layers/i/mlp": ..., "layers/i/heads": ...}``: the discovered groups of the encoder.

  Example:
    >>> c = model_lib.MiniLMConfig(vocab_size=8, hidden_size=4, num_heads=(2,), head_dim=2,
    ...                            intermediate_sizes=(6,), max_position=8)
    >>> sorted((m.path, m.axis, m.inner) for m in encoder_groups(c)["layers/0/heads"].members)[:2]
    [('layers/0/attention_out/kernel', 0, 2), ('layers/0/key/bias', 0, 2)]
  """
  return dict(_discovered_groups(config))


@functools.lru_cache(maxsize=16)
def _discovered_groups(config: model_lib.MiniLMConfig) -> tuple[tuple[str, groups.Coupled], ...]:
  """The named groups of ``config`` (a frozen config: discovered once, 0.25 s for
  all-MiniLM-L6-v2's shape, for every caller that names or compacts its groups)."""
  abstract = nnx.eval_shape(lambda: model_lib.MiniLM(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  tokens = jax.ShapeDtypeStruct((1, min(2, config.max_position)), jnp.int32)
  s = structure.discover(lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask),
                         nnx.to_pure_dict(state), tokens, tokens)
  out = {}
  for group in s.groups.values():
    if group.kind in _KINDS and group.producer.startswith("layers/"):
      out[f"layers/{group.producer.split('/')[1]}/{_KINDS[group.kind]}"] = group.coupled
  # Layer by layer, each layer's MLP units before its heads.
  return tuple(sorted(out.items(), key=lambda kv: (int(kv[0].split("/")[1]),
                                                   kv[0].endswith("heads"))))


def compact_encoder(model: model_lib.MiniLM, keep: dict[str, Any]
                    ) -> tuple[model_lib.MiniLM, model_lib.MiniLMConfig]:
  """A smaller :class:`MiniLM` and its config without the dropped heads and MLP units.

  Args:
    model: the (dense or masked) encoder.
    keep: per-unit keep vectors keyed like :func:`encoder_groups` (``layers/i/mlp``,
      ``layers/i/heads``); absent groups are kept whole.

  Example:
    >>> import numpy as np
    >>> c = model_lib.MiniLMConfig(vocab_size=8, hidden_size=4, num_heads=(2,), head_dim=2,
    ...                            intermediate_sizes=(6,), max_position=8)
    >>> m = model_lib.MiniLM(c, rngs=nnx.Rngs(0))
    >>> small, config = compact_encoder(m, {"layers/0/heads": np.array([True, False])})
    >>> config.num_heads, config.intermediate_sizes
    ((1,), (6,))
  """
  coupled = {k: v for k, v in encoder_groups(model.config).items() if k in keep}
  unknown = sorted(set(keep) - set(coupled))
  if unknown:
    raise ValueError(f"keep has groups the encoder does not: {unknown}.")
  params = pruning.compact(nnx.to_pure_dict(nnx.state(model, nnx.Param)), coupled, keep)
  config = model_lib.config_from_params(params, model.config)
  return loading.from_params(config, params), config
