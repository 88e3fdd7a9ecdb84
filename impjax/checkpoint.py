"""Orbax checkpoints of a training run: arrays (params, optimizer state with masks and
importance estimates, step) plus JSON metadata, resumable after interruption.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from impjax import checkpoint
  >>> ckpt = checkpoint.Checkpointer(tempfile.mkdtemp())
  >>> ckpt.save(3, {"w": jnp.ones(2)}, {"history": []})
  >>> step, state, meta = ckpt.restore_latest({"w": jnp.zeros(2)})
  >>> step, state["w"].tolist()
  (3, [1.0, 1.0])
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin ``ocp.CheckpointManager``: ``state`` (arrays) and ``meta`` (JSON) per step.

  Args:
    directory: where checkpoints live (made absolute).
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` and ``meta`` at ``step`` (waits until written; re-saving a step is a no-op)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the latest checkpoint, restored like ``target``; or ``None``."""
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return step, restored["state"], restored["meta"]

  def close(self) -> None:
    self._manager.close()
