"""Orbax checkpoints of a training run that know when they are damaged.

Each checkpoint holds the arrays (params, optimizer state with masks and importance estimates)
and JSON metadata, plus a SHA-256 digest of every saved array leaf, written with the metadata.
On restore, a checkpoint that fails to load or whose arrays do not match their digests is
reported by step and moved aside into ``<directory>.damaged/``, and the newest intact one is
restored; when checkpoints exist but none is intact, :class:`DamagedCheckpoints` is raised and
nothing is moved or overwritten, so a run never silently starts over.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from impjax import checkpoint
  >>> ckpt = checkpoint.Checkpointer(tempfile.mkdtemp())
  >>> ckpt.save(3, {"w": jnp.ones(2)}, {"history": []})
  >>> step, state, meta = ckpt.restore_latest({"w": jnp.zeros(2)})
  >>> step, state["w"].tolist(), meta
  (3, [1.0, 1.0], {'history': []})
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from impjax import tree_utils

_DIGESTS = "_impjax_sha256"  # the metadata key holding the arrays' digests


class DamagedCheckpoints(RuntimeError):
  """Every checkpoint of a directory failed to load or failed its integrity check."""


def _host_value(x: Any) -> np.ndarray:
  """The full value of a leaf on this host (a replicated array's local copy)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError("Checkpoint digests need arrays that are fully addressable or "
                       "replicated on every process.")
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def digests(state: Any) -> dict[str, str]:
  """``{leaf path: SHA-256 of its dtype, shape and bytes}`` of every array leaf of ``state``.

  Example:
    >>> import jax.numpy as jnp
    >>> d = digests({"w": jnp.ones(2)})
    >>> list(d), len(d["w"])
    (['w'], 64)
  """
  out = {}
  for path, leaf in tree_utils.leaves_by_path(state).items():
    value = np.ascontiguousarray(_host_value(leaf))
    h = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
    h.update(value.tobytes())
    out[path] = h.hexdigest()
  return out


class Checkpointer:
  """A thin ``ocp.CheckpointManager``: ``state`` (arrays) and ``meta`` (JSON) per step, with
  digests of the arrays checked on restore.

  Args:
    directory: where checkpoints live (made absolute); damaged ones move to
      ``directory + ".damaged"``.
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
    self.damaged: list[tuple[int, str]] = []  # (step, why) found by the last restore_latest

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state``, ``meta`` and the digests of ``state`` at ``step`` (waits until
    written; re-saving a step is a no-op)."""
    if _DIGESTS in meta:
      raise ValueError(f"meta must not use the reserved key '{_DIGESTS}'.")
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**meta, _DIGESTS: digests(state)})))
    self._manager.wait_until_finished()

  def _restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """``(state, meta)`` of ``step``; ``ValueError`` saying why it is damaged."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  # any failure to load is damage
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise ValueError(f"it does not load ({type(e).__name__}: {first_line[:200]})") from e
    meta = dict(restored["meta"] or {})
    saved = meta.pop(_DIGESTS, None)
    if saved is None:
      raise ValueError("its metadata holds no digests of the arrays")
    now = digests(restored["state"])
    bad = sorted(p for p in set(saved) | set(now) if saved.get(p) != now.get(p))
    if bad:
      raise ValueError(f"{len(bad)} array(s) differ from their saved digests, e.g. '{bad[0]}'")
    return restored["state"], meta

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged step directories into ``directory.damaged/`` (process 0 moves; every
    process waits for it and re-reads the directory)."""
    if jax.process_index() == 0:
      aside = self.directory + ".damaged"
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, str(step))
        if os.path.exists(target):
          shutil.rmtree(target)
        shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("impjax_checkpoint_set_aside")
    self._manager.reload()

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the newest intact checkpoint, restored like ``target``;
    ``None`` when there is none at all.

    Damaged checkpoints newer than it are logged by step, listed in :attr:`damaged` and moved
    aside. If checkpoints exist and none is intact, raises :class:`DamagedCheckpoints` naming
    each step and leaves them.
    """
    self.damaged = damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, meta = self._restore(step, target)
      except ValueError as e:
        logging.warning("Checkpoint at step %d in %s is damaged: %s.", step, self.directory, e)
        damaged.append((step, str(e)))
        continue
      if damaged:
        self._set_aside([s for s, _ in damaged])
        logging.warning("Resuming from step %d; damaged checkpoint(s) %s moved to %s.damaged.",
                        step, [s for s, _ in damaged], self.directory)
      return step, state, meta
    if damaged:
      raise DamagedCheckpoints(
          f"Every checkpoint in {self.directory} is damaged, so the run cannot resume and will "
          "not start over on top of them: " + "; ".join(f"step {s}: {why}" for s, why in damaged)
          + ". Move them away to start a new run in this directory.")
    return None

  def close(self) -> None:
    self._manager.close()
