"""Two processes over loopback (jax.distributed, CPU collectives) give the single-process run;
their checkpoint restores in one process."""

import json
import os
import socket
import subprocess
import sys

import chex
from flax import nnx
import numpy as np
import pytest

from impjax import checkpoint
from configs import default
from launch import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.steps=60", "--config.pruning.begin_step=20", "--config.pruning.end_step=40",
         "--config.pruning.frequency=10", "--config.eval_every=30", "--config.checkpoint_every=30",
         "--config.progress=False"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, extra=()):
  cmd = [sys.executable, os.path.join(REPO, "launch", "main.py"),
         f"--config={os.path.join(REPO, 'configs', 'digits_mlp.py')}:quick",
         f"--workdir={workdir}", "--alsologtostderr", *FLAGS, *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # One device per process, XLA's default optimizations: the masks are compared exactly.
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _finish(procs):
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _restore_final(workdir):
  config = default.get_config("quick")
  model = train.build_model(config, np.zeros((8, 8, 1), np.float32), 10)
  params = nnx.to_pure_dict(nnx.split(model)[1])
  target = {"params": params, "opt_state": train.build_optimizer(config).init(params)}
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore_latest(target)
  ckpt.close()
  return restored


@pytest.mark.slow  # three launch/main.py subprocesses
def test_two_processes_equal_one(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  port = _free_port()
  procs = [_launch(single)] + [
      _launch(multi, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}"]) for i in range(2)]
  outs = _finish(procs)
  assert "JAX process 0 of 1" in outs[0]
  assert "JAX process 0 of 2" in outs[1] and "JAX process 1 of 2" in outs[2]

  # Only process 0 wrote the run's files.
  summary_1 = json.loads((single / "summary.json").read_text())
  summary_2 = json.loads((multi / "summary.json").read_text())
  assert summary_2["final_sparsity"] == summary_1["final_sparsity"]
  assert abs(summary_2["final_accuracy"] - summary_1["final_accuracy"]) <= 1 / 360

  step_1, state_1, meta_1 = _restore_final(str(single))
  step_2, state_2, meta_2 = _restore_final(str(multi))  # written by 2 processes, read by 1
  assert step_1 == step_2 == 60
  masks_1 = state_1["opt_state"].masks
  masks_2 = state_2["opt_state"].masks
  chex.assert_trees_all_equal(masks_2, masks_1)
  chex.assert_trees_all_close(state_2["params"], state_1["params"], rtol=1e-3, atol=1e-4)
  assert [h["step"] for h in meta_2["history"]] == [h["step"] for h in meta_1["history"]]
