"""Checks of the main job's config, field against field, before any work.

:func:`check_config` refuses a config that cannot do what it says — a schedule outside the run,
a non-positive step count or batch size, a non-finite rate, an unknown model, criterion,
schedule or granularity, an invalid regex — with one error that names every offending field.

Example:
  >>> from configs import default
  >>> config = default.get_config("quick")
  >>> config.pruning.end_step = 1000
  >>> check_config(config)
  Traceback (most recent call last):
  ...
  ValueError: The config cannot run as written:
  - config.pruning.end_step=1000 is past config.steps=400
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import ml_collections

from impjax import scores
from impjax import select

SCHEDULES = ("polynomial", "iterative", "one_shot")
METHODS = ("gradual", "rigl", "set", "static")
SCOPES = ("global", "local")
ALLOCATIONS = ("",) + select.ALLOCATIONS  # "": no per-leaf allocation


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _granularity_problem(value: Any) -> str | None:
  if value in ("element", "neurons"):
    return None
  match = re.fullmatch(r"(\d+):(\d+)", str(value))
  if not match:
    return "is not element, neurons or N:M (such as 2:4)"
  n, m = int(match.group(1)), int(match.group(2))
  if not 0 < n <= m:
    return f"needs 0 < N <= M, got N={n}, M={m}"
  return None


def _regex_problem(value: Any) -> str | None:
  try:
    re.compile(value)
  except (re.error, TypeError) as e:
    return f"is not a valid regex ({e})"
  return None


def check_config(config: ml_collections.ConfigDict, model_names: Iterable[str] = ()) -> None:
  """Raises ``ValueError`` listing every field of ``config`` that cannot work.

  Args:
    config: the job's config (every field of ``configs/default.py``).
    model_names: the known ``config.model.name`` values (``launch.train.MODELS``); empty:
      not checked here.
  """
  problems: list[str] = []

  def need(ok: bool, field: str, why: str) -> None:
    if not ok:
      problems.append(f"config.{field}={config_value(field)!r} {why}")

  def config_value(field: str) -> Any:
    node = config
    for part in field.split("."):
      node = node[part]
    return node

  for field in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
                "max_nonfinite_steps"):
    need(_is_int(config_value(field)) and config_value(field) > 0, field,
         "must be a positive integer")
  need(_is_int(config.seed), "seed", "must be an integer")
  need(_is_int(config.halt_after_step), "halt_after_step", "must be an integer (-1: never)")
  need(_is_number(config.learning_rate) and config.learning_rate > 0, "learning_rate",
       "must be a finite number > 0")
  need(_is_number(config.weight_decay) and config.weight_decay >= 0, "weight_decay",
       "must be a finite number >= 0")
  need(isinstance(config.dataset, str) and bool(config.dataset), "dataset",
       "must name a tfds dataset")
  known_models = sorted(model_names)
  if known_models:
    need(config.model.name in known_models, "model.name", f"is not one of {known_models}")
  for field in ("model.mlp_hidden", "model.cnn_channels"):
    value = config_value(field)
    need(isinstance(value, (tuple, list)) and len(value) > 0
         and all(_is_int(v) and v > 0 for v in value), field,
         "must be a non-empty sequence of positive integers")
  need(_is_int(config.model.cnn_dense) and config.model.cnn_dense > 0, "model.cnn_dense",
       "must be a positive integer")

  pruning = config.pruning
  need(pruning.criterion in scores.CRITERIA, "pruning.criterion",
       f"is not a registered criterion {sorted(scores.CRITERIA)}")
  need(pruning.method in METHODS, "pruning.method", f"is not one of {list(METHODS)}")
  need(_is_number(pruning.drop_fraction) and 0.0 <= pruning.drop_fraction <= 1.0,
       "pruning.drop_fraction", "must lie in [0, 1]")
  if pruning.method in METHODS[1:]:
    need(pruning.granularity == "element", "pruning.granularity",
         f"must be 'element' for config.pruning.method={pruning.method!r} (it rewires single "
         "weights)")
    need(not _is_number(pruning.final_sparsity) or pruning.final_sparsity < 1.0,
         "pruning.final_sparsity",
         f"must be below 1 for config.pruning.method={pruning.method!r} (it trains the kept "
         "weights from step 0)")
  need(pruning.schedule in SCHEDULES, "pruning.schedule", f"is not one of {list(SCHEDULES)}")
  need(_is_number(pruning.final_sparsity) and 0.0 <= pruning.final_sparsity <= 1.0,
       "pruning.final_sparsity", "must lie in [0, 1]")
  need(_is_number(pruning.ema_decay) and 0.0 <= pruning.ema_decay < 1.0, "pruning.ema_decay",
       "must lie in [0, 1)")
  need(_is_int(pruning.frequency) and pruning.frequency > 0, "pruning.frequency",
       "must be a positive integer")
  for field in ("begin_step", "end_step"):
    need(_is_int(pruning[field]) and pruning[field] >= 0, f"pruning.{field}",
         "must be an integer >= 0")
  if _is_int(config.steps) and _is_int(pruning.begin_step) and _is_int(pruning.end_step):
    need(pruning.begin_step < config.steps, "pruning.begin_step",
         f"is not before config.steps={config.steps}: pruning would never start")
    if pruning.schedule != "one_shot":
      need(pruning.end_step <= config.steps, "pruning.end_step",
           f"is past config.steps={config.steps}")
      need(pruning.end_step >= pruning.begin_step, "pruning.end_step",
           f"is before config.pruning.begin_step={pruning.begin_step}")
  problem = _granularity_problem(pruning.granularity)
  need(problem is None, "pruning.granularity", problem or "")
  problem = _regex_problem(pruning.keep_dense)
  need(problem is None, "pruning.keep_dense", problem or "")
  need(pruning.scope in SCOPES, "pruning.scope", f"is not one of {list(SCOPES)}")
  need(pruning.allocation in ALLOCATIONS, "pruning.allocation",
       f"is not one of {list(ALLOCATIONS)}")
  if pruning.allocation and pruning.scope in SCOPES and pruning.method == "gradual":
    need(pruning.scope == "local", "pruning.scope",
         f"must be 'local' for config.pruning.allocation={pruning.allocation!r}")
  if problems:
    raise ValueError("The config cannot run as written:\n" + "\n".join(f"- {p}" for p in problems))
