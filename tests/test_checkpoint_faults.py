"""Damaged checkpoints are detected, named by step and skipped; a run never silently starts over."""

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

from flax import nnx
import jax
import numpy as np
import pytest

from configs import default
from impjax import checkpoint
from launch import train


def _config(halt=-1):
  config = default.get_config("quick")
  config.steps, config.checkpoint_every, config.eval_every, config.log_every = 80, 20, 20, 10
  config.pruning.begin_step, config.pruning.end_step, config.pruning.frequency = 10, 60, 10
  config.halt_after_step, config.progress = halt, False
  return config


def _final_state(workdir):
  """The arrays of the run's step-80 checkpoint, as numpy."""
  config = _config()
  restored = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  params = jax.tree.map(np.zeros_like, _template(config))
  step, state, _ = restored.restore_latest(params)
  restored.close()
  assert step == 80
  return jax.tree.map(np.asarray, state)


def _template(config):
  model = train.build_model(config, np.zeros((8, 8, 1), np.float32), 10)
  params = nnx.to_pure_dict(nnx.split(model)[1])
  return {"params": params, "opt_state": train.build_optimizer(config).init(params)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted 80-step run, and a run halted after step 60 (checkpoints 40 and 60)."""
  whole = str(tmp_path_factory.mktemp("whole"))
  train.train_and_evaluate(_config(), whole)
  halted = str(tmp_path_factory.mktemp("halted"))
  train.train_and_evaluate(_config(halt=60), halted)
  assert sorted(os.listdir(os.path.join(halted, "checkpoints"))) == ["40", "60"]
  return _final_state(whole), halted


def _largest_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete(step_dir):
  os.remove(_largest_file(step_dir))


def _flip_bytes(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(64)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, "meta", "metadata"))


@pytest.mark.slow  # runs the main job (and the module's `runs` fixture: two more runs)
@pytest.mark.parametrize("damage", [_truncate, _delete, _flip_bytes, _delete_metadata],
                         ids=["truncated", "deleted", "flipped-64-bytes", "metadata-deleted"])
def test_damaged_latest_checkpoint_is_skipped_and_the_run_ends_equal(runs, damage, tmp_path,
                                                                      caplog):
  whole, halted = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(halted, workdir)
  damage(os.path.join(workdir, "checkpoints", "60"))
  with caplog.at_level(logging.WARNING):
    summary = train.train_and_evaluate(_config(), workdir)
  assert "Checkpoint at step 60" in caplog.text and "damaged" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", "60"))
  assert summary["steps"] == 80
  for a, b in zip(jax.tree.leaves(_final_state(workdir)), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)  # bitwise: resumed from 40, as if never interrupted


@pytest.mark.slow
def test_a_save_killed_before_it_finished_is_not_a_checkpoint(runs, tmp_path):
  """A kill during a save leaves orbax's temporary directory, never a step: resume from 60."""
  whole, halted = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(halted, workdir)
  unfinished = os.path.join(workdir, "checkpoints", "80.orbax-checkpoint-tmp-1")
  shutil.copytree(os.path.join(workdir, "checkpoints", "60"), unfinished)
  _truncate(unfinished)
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 60
  train.train_and_evaluate(_config(), workdir)
  for a, b in zip(jax.tree.leaves(_final_state(workdir)), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)


# The job, in a process of its own, with orbax's commit of the step-80 save held: the save's
# files are written to orbax's temporary directory, and the process waits there to be killed.
_HELD_SAVE = textwrap.dedent("""
    import sys, time
    from orbax.checkpoint._src.path import atomicity
    from launch import train
    from tests.test_checkpoint_faults import _config
    marker, workdir = sys.argv[1], sys.argv[2]
    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def held(self, *args, **kwargs):
      if self.get_final().name == "80":
        open(marker, "w").close()
        time.sleep(600)
      return await commit(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = held
    train.train_and_evaluate(_config(), workdir)
""")


@pytest.mark.slow  # runs the main job twice, once in a subprocess that is killed
def test_a_job_killed_during_a_save_resumes_from_the_newest_intact_checkpoint(runs, tmp_path):
  whole, _ = runs
  workdir, marker = str(tmp_path / "run"), str(tmp_path / "saving")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
  job = subprocess.Popen([sys.executable, "-c", _HELD_SAVE, marker, workdir], cwd=repo, env=env)
  deadline = time.time() + 300
  while not os.path.exists(marker) and job.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.exists(marker), f"the job never reached the step-80 save (exit {job.poll()})"
  os.kill(job.pid, signal.SIGKILL)  # a real kill, mid-save
  assert job.wait(60) == -signal.SIGKILL
  left = os.listdir(os.path.join(workdir, "checkpoints"))
  assert "80" not in left and any(n.startswith("80.orbax-checkpoint-tmp") for n in left), left
  summary = train.train_and_evaluate(_config(), workdir)
  assert summary["steps"] == 80
  for a, b in zip(jax.tree.leaves(_final_state(workdir)), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)  # bitwise: resumed from 60, as if never killed


@pytest.mark.slow  # the `runs` fixture
def test_when_every_checkpoint_is_damaged_the_run_refuses_and_keeps_them(runs, tmp_path):
  _, halted = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(halted, workdir)
  _flip_bytes(os.path.join(workdir, "checkpoints", "60"))
  _delete(os.path.join(workdir, "checkpoints", "40"))
  with pytest.raises(checkpoint.DamagedCheckpoints, match=r"step 60: .*; step 40: "):
    train.train_and_evaluate(_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["40", "60"]
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


def test_digests_cover_every_leaf_and_reserved_key_is_refused(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with pytest.raises(ValueError, match="reserved key"):
    ckpt.save(1, {"w": np.ones(2)}, {"_impjax_sha256": {}})
  a = checkpoint.digests({"w": np.ones(2, np.float32), "m": np.array([True, False])})
  b = checkpoint.digests({"w": np.ones(2, np.float32), "m": np.array([True, True])})
  assert a["w"] == b["w"] and a["m"] != b["m"]
  assert checkpoint.digests({"w": np.ones(2, np.float32)})["w"] != checkpoint.digests(
      {"w": np.ones(2, np.float64)})["w"]
  ckpt.close()
