"""Compaction: slice pruned units and heads out of the arrays — a really smaller model.

Given :class:`impjax.groups.Coupled` groups and per-unit keep vectors, every member leaf
keeps only the entries of kept units along its unit axis. Pruned units contribute exactly
zero in the masked model (their input columns, biases and output rows are zero), so the
compacted model computes the same function with fewer parameters and FLOPs. Shapes depend on
the masks, so compaction runs eagerly (not under ``jit``).

Reference: Fang et al. 2023, "DepGraph" (physically removing coupled groups); Michel et al.
2019 (removing heads); Adaptive MLP Pruning (a smaller, faster MLP).

Example:
  >>> import jax.numpy as jnp
  >>> from impjax import groups, pruning
  >>> params = {"fc1": {"kernel": jnp.ones((3, 4))}, "fc2": {"kernel": jnp.ones((4, 2))}}
  >>> g = {"mlp": groups.Coupled((("fc1/kernel", 1), ("fc2/kernel", 0)))}
  >>> small = pruning.compact(params, g, {"mlp": jnp.array([True, False, True, False])})
  >>> small["fc1"]["kernel"].shape, small["fc2"]["kernel"].shape
  ((3, 2), (2, 2))
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.models import minilm
from impjax import groups
from impjax.pruning.structured import encoder_groups


def compact(params: tree_utils.Params, coupled: dict[str, groups.Coupled], keep: dict[str,
            Any]) -> Any:
  """``params`` with the entries of dropped units removed from every member leaf.

  Example:
    >>> g = {"heads": groups.Coupled((("q", 1),), size=2)}
    >>> compact({"q": jnp.arange(8.0).reshape(2, 4)}, g, {"heads": np.array([False, True])})["q"].tolist()
    [[2.0, 3.0], [6.0, 7.0]]
  """
  groups.coupled_masks(params, coupled, keep)  # validates members and keep shapes
  slices = {}
  for name, group in coupled.items():
    index = np.flatnonzero(np.repeat(np.asarray(keep[name], bool), group.size))
    for path, axis in group.members:
      slices[path] = (index, axis)

  def leaf(path, x):
    if path not in slices:
      return x
    index, axis = slices[path]
    return jnp.take(jnp.asarray(x), index, axis=axis)
  return tree_utils.map_with_path(leaf, params)


def compact_encoder(model: minilm.MiniLM, keep: dict[str, Any]
                    ) -> tuple[minilm.MiniLM, minilm.MiniLMConfig]:
  """A smaller :class:`MiniLM` and its config without the dropped heads and MLP units.

  Args:
    model: the (dense or masked) encoder.
    keep: per-unit keep vectors keyed like :func:`encoder_groups` (``layers/i/mlp``,
      ``layers/i/heads``); absent groups are kept whole.

  Example:
    >>> from impjax.models import MiniLMConfig, MiniLM
    >>> c = MiniLMConfig(vocab_size=8, hidden_size=4, num_heads=(2,), head_dim=2,
    ...                  intermediate_sizes=(6,), max_position=8)
    >>> m = MiniLM(c, rngs=nnx.Rngs(0))
    >>> small, config = compact_encoder(m, {"layers/0/heads": np.array([True, False])})
    >>> config.num_heads, config.intermediate_sizes
    ((1,), (6,))
  """
  groups = {k: v for k, v in encoder_groups(model.config).items() if k in keep}
  unknown = sorted(set(keep) - set(groups))
  if unknown:
    raise ValueError(f"keep has groups the encoder does not: {unknown}.")
  params = compact(nnx.to_pure_dict(nnx.state(model, nnx.Param)), groups, keep)
  config = minilm.config_from_params(params, model.config)
  return minilm.from_params(config, params), config
