"""The main job refuses a config that cannot do what it says, naming the field, before any work."""

import os
import subprocess
import sys

import pytest

from configs import default
from launch import config_checks
from launch import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = {  # field override -> what the message must say
    "steps=0": ("steps", 0, "config.steps=0 must be a positive integer"),
    "steps<0": ("steps", -5, "config.steps=-5 must be a positive integer"),
    "batch_size=0": ("batch_size", 0, "config.batch_size=0"),
    "nan lr": ("learning_rate", float("nan"), "config.learning_rate=nan must be a finite"),
    "inf lr": ("learning_rate", float("inf"), "config.learning_rate=inf"),
    "negative lr": ("learning_rate", -1e-3, "config.learning_rate=-0.001"),
    "nan decay": ("weight_decay", float("nan"), "config.weight_decay=nan"),
    "log_every=0": ("log_every", 0, "config.log_every=0"),
    "eval_every<0": ("eval_every", -1, "config.eval_every=-1"),
    "checkpoint_every=0": ("checkpoint_every", 0, "config.checkpoint_every=0"),
    "max_nonfinite=0": ("max_nonfinite_steps", 0, "config.max_nonfinite_steps=0"),
    "empty dataset": ("dataset", "", "config.dataset=''"),
    "model": ("model.name", "vit", "config.model.name='vit' is not one of ['cnn', 'mlp']"),
    "empty hidden": ("model.mlp_hidden", (), "config.model.mlp_hidden=()"),
    "zero hidden": ("model.mlp_hidden", (256, 0), "config.model.mlp_hidden=(256, 0)"),
    "criterion": ("pruning.criterion", "snip", "config.pruning.criterion='snip' is not a "
                  "registered criterion"),
    "schedule": ("pruning.schedule", "cosine", "config.pruning.schedule='cosine'"),
    "sparsity>1": ("pruning.final_sparsity", 1.2, "config.pruning.final_sparsity=1.2 must lie "
                   "in [0, 1]"),
    "nan sparsity": ("pruning.final_sparsity", float("nan"), "config.pruning.final_sparsity=nan"),
    "ema_decay=1": ("pruning.ema_decay", 1.0, "config.pruning.ema_decay=1.0 must lie in [0, 1)"),
    "frequency=0": ("pruning.frequency", 0, "config.pruning.frequency=0"),
    "end past steps": ("pruning.end_step", 1000, "config.pruning.end_step=1000 is past "
                       "config.steps=400"),
    "begin past steps": ("pruning.begin_step", 400, "config.pruning.begin_step=400 is not before "
                         "config.steps=400"),
    "end before begin": ("pruning.end_step", 50, "config.pruning.end_step=50 is before "
                         "config.pruning.begin_step=100"),
    "negative begin": ("pruning.begin_step", -1, "config.pruning.begin_step=-1"),
    "granularity": ("pruning.granularity", "rows", "config.pruning.granularity='rows' is not "
                    "element, neurons or N:M"),
    "n>m": ("pruning.granularity", "4:2", "config.pruning.granularity='4:2' needs 0 < N <= M"),
    "0:4": ("pruning.granularity", "0:4", "config.pruning.granularity='0:4'"),
    "regex": ("pruning.keep_dense", "convs/(0", "config.pruning.keep_dense='convs/(0' is not a "
              "valid regex"),
    "scope": ("pruning.scope", "layer", "config.pruning.scope='layer'"),
    "allocation": ("pruning.allocation", "lamp", "config.pruning.allocation='lamp'"),
    "method": ("pruning.method", "lottery", "config.pruning.method='lottery' is not one of"),
    "drop_fraction": ("pruning.drop_fraction", 1.5, "config.pruning.drop_fraction=1.5"),
    "allocation needs local": ("pruning.allocation", "erk", "config.pruning.scope='global' must "
                               "be 'local' for config.pruning.allocation='erk'"),
}


def _set(config, field, value):
  node = config
  *parents, last = field.split(".")
  for part in parents:
    node = node[part]
  node[last] = value


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_field_is_refused_by_name_before_any_work(case, tmp_path):
  field, value, message = BAD[case]
  config = default.get_config("quick")
  _set(config, field, value)
  with pytest.raises(ValueError, match="The config cannot run as written") as info:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert message in str(info.value)
  assert not (tmp_path / "run").exists()  # refused before the workdir was touched


def test_sparse_training_refuses_structured_granularity(tmp_path):
  config = default.get_config("quick")
  config.pruning.method, config.pruning.granularity = "rigl", "2:4"
  with pytest.raises(ValueError, match="config.pruning.granularity='2:4' must be 'element' for "
                     "config.pruning.method='rigl'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_every_problem_is_listed_at_once():
  config = default.get_config("quick")
  config.steps, config.pruning.scope = -1, "layer"
  with pytest.raises(ValueError) as info:
    config_checks.check_config(config, train.MODELS)
  assert "config.steps=-1" in str(info.value) and "config.pruning.scope='layer'" in str(info.value)


def test_the_shipped_configs_pass():
  for arg in (None, "quick"):
    config_checks.check_config(default.get_config(arg), train.MODELS)


@pytest.mark.slow  # a subprocess: launch/main.py
def test_launcher_exits_nonzero_naming_the_field(tmp_path):
  cmd = [sys.executable, os.path.join(REPO, "launch", "main.py"),
         f"--config={os.path.join(REPO, 'configs', 'digits_mlp.py')}:quick",
         f"--workdir={tmp_path}", "--config.pruning.end_step=1000"]
  run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode != 0
  assert "config.pruning.end_step=1000 is past config.steps=400" in run.stderr
  assert not (tmp_path / "summary.json").exists()
