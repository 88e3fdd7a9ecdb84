"""The main job: digits results, resume after interruption, and the launch script."""

import json
import os
import subprocess
import sys

import chex
from flax import nnx
import numpy as np
import pytest

from impjax import checkpoint
from impjax import data
from configs import default
from launch import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config():
  config = default.get_config("quick")
  config.steps = 120
  config.pruning.begin_step = 30
  config.pruning.end_step = 90
  config.pruning.frequency = 20
  config.eval_every = 40
  config.checkpoint_every = 50
  config.progress = False
  return config


@pytest.mark.slow  # the 4000-step default run
def test_default_mlp_run_reproduces_dense_and_pruned_accuracy(tmp_path):
  config = default.get_config()
  config.progress = False
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["dense_accuracy"] >= 0.96
  assert summary["final_sparsity"] == pytest.approx(0.9, abs=1e-6)
  assert summary["zero_fraction_of_prunable"] == pytest.approx(0.9, abs=1e-6)
  assert summary["final_accuracy"] >= summary["dense_accuracy"] - 0.01
  written = json.loads((tmp_path / "summary.json").read_text())
  for key in ("dense_accuracy", "final_accuracy", "final_sparsity", "criterion", "steps"):
    assert written[key] == summary[key]
  assert (tmp_path / "sparsity_per_layer.png").stat().st_size > 0
  history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [h["step"] for h in history] == list(range(250, 4001, 250))
  assert history[-1]["sparsity"] == pytest.approx(0.9, abs=1e-6)


@pytest.mark.parametrize("method", ["rigl", "static"])
def test_sparse_training_job_is_sparse_from_the_start_and_keeps_its_counts(method, tmp_path):
  config = default.get_config("quick")
  config.progress, config.pruning.method = False, method
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["dense_accuracy"] is None  # no dense phase
  history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(h["sparsity"] == pytest.approx(0.9, abs=1e-3) for h in history)
  assert summary["zero_fraction_of_prunable"] == pytest.approx(summary["final_sparsity"])
  assert summary["final_accuracy"] >= 0.8


def _restore(workdir, config):
  """Final params and optimizer state saved by a finished run."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  train_data = data.load_split(config.dataset, "train")
  model = train.build_model(config, train_data["image"][0], 10)
  params = nnx.to_pure_dict(nnx.split(model)[1])
  target = {"params": params, "opt_state": train.build_optimizer(config).init(params)}
  step, state, meta = ckpt.restore_latest(target)
  ckpt.close()
  return step, state, meta


@pytest.mark.slow  # three runs of the main job
def test_interrupted_run_resumes_to_the_same_masks_and_params(tmp_path):
  config = small_config()
  straight = str(tmp_path / "straight")
  full = train.train_and_evaluate(config, straight)

  resumed = str(tmp_path / "resumed")
  halted = small_config()
  halted.halt_after_step = 73  # after the step-50 checkpoint, inside the pruning phase
  assert train.train_and_evaluate(halted, resumed) == {}
  again = train.train_and_evaluate(config, resumed)

  s1, state1, meta1 = _restore(straight, config)
  s2, state2, meta2 = _restore(resumed, config)
  assert s1 == s2 == config.steps
  chex.assert_trees_all_equal(state1["params"], state2["params"])
  chex.assert_trees_all_equal(state1["opt_state"], state2["opt_state"])
  assert meta1 == meta2
  assert again["final_accuracy"] == full["final_accuracy"]
  assert again["dense_accuracy"] == full["dense_accuracy"]


@pytest.mark.slow  # a subprocess: launch/main.py
def test_launch_script_runs_the_config(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(REPO, "launch", "main.py"),
         f"--config={os.path.join(REPO, 'configs', 'digits_cnn.py')}:quick",
         f"--workdir={workdir}", "--config.steps=60", "--config.pruning.begin_step=20",
         "--config.pruning.end_step=40", "--config.pruning.frequency=10",
         "--config.pruning.granularity=2:4", "--config.pruning.keep_dense=convs/0/",
         "--config.progress=False"]
  subprocess.run(cmd, check=True, cwd=tmp_path, timeout=300)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["model"] == "cnn" and summary["granularity"] == "2:4"
  assert summary["final_sparsity"] == pytest.approx(0.5)
  assert "convs/0/kernel" not in summary["sparsity_per_layer"]
  assert summary["sparsity_per_layer"]["convs/1/kernel"] == pytest.approx(0.5)


def test_bad_config_values_fail_clearly():
  config = small_config()
  config.pruning.granularity = "rows"
  with pytest.raises(ValueError, match="granularity"):
    train.build_optimizer(config)
  config = small_config()
  config.pruning.final_sparsity = 1.2
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    train.build_optimizer(config)
  config = small_config()
  config.model.name, config.pruning.granularity = "cnn", "2:4"
  with pytest.raises(ValueError, match="convs/0/kernel"):
    train.build_optimizer(config).init(_cnn_params(config))
  with pytest.raises(ValueError, match="quick"):
    default.get_config("fast")
  config = small_config()
  config.model.name = "vit"
  with pytest.raises(ValueError, match=r"config.model.name='vit'"):
    _cnn_params(config)


def _cnn_params(config):
  model = train.build_model(config, np.zeros((8, 8, 1), np.float32), 10)
  return nnx.to_pure_dict(nnx.split(model)[1])
