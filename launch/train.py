"""The main job: train a Flax model on a tfds dataset while pruning it gradually by importance.

``launch/main.py`` runs it; the configs in ``configs/`` (``default.py`` and the configs that
override it) say what it does. ``train_and_evaluate(config, workdir)`` trains data-parallel over every device of every process
(params replicated, each process feeding its share of each global batch; only process 0 writes
logs and plots, all processes join the orbax checkpoint), evaluates the dense model where pruning
begins,
prunes on the configured schedule with the configured criterion (``impjax.transforms.prune``
around AdamW), checkpoints with orbax (resuming from the latest checkpoint in ``workdir``),
and writes ``metrics.jsonl``, ``summary.json`` and plots into ``workdir``.

Example:
  >>> import tempfile
  >>> from configs import default
  >>> from launch import train
  >>> config = default.get_config("quick")
  >>> config.steps, config.pruning.begin_step, config.progress = 60, 20, False
  >>> config.pruning.end_step, config.pruning.frequency = 40, 10
  >>> summary = train.train_and_evaluate(config, tempfile.mkdtemp())
  >>> round(summary["final_sparsity"], 3)
  0.9
"""

from __future__ import annotations

import json
import os
import time

from absl import logging
from flax import nnx
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from impjax import checkpoint
from impjax import data as data_lib
from impjax import groups
from impjax import models
from impjax import schedules
from impjax import scores
from impjax import select
from impjax import transforms
from impjax import viz
from impjax.flax import training
from impjax.transforms import masking
from launch import config_checks


def _mlp(model: ml_collections.ConfigDict, example: np.ndarray, num_classes: int,
         rngs: nnx.Rngs) -> nnx.Module:
  return models.MLP(int(np.prod(example.shape)), tuple(model.mlp_hidden), num_classes,
                    rngs=rngs)


def _cnn(model: ml_collections.ConfigDict, example: np.ndarray, num_classes: int,
         rngs: nnx.Rngs) -> nnx.Module:
  return models.CNN(example.shape[-1], tuple(model.cnn_channels), model.cnn_dense,
                    num_classes, image_size=example.shape[0], rngs=rngs)


MODELS = {"mlp": _mlp, "cnn": _cnn}
"""``config.model.name -> builder(model config, one example, classes, rngs)``."""


def build_model(config: ml_collections.ConfigDict, example: np.ndarray, num_classes: int):
  """The configured NNX model for inputs shaped like ``example`` (one example)."""
  if config.model.name not in MODELS:
    raise ValueError(f"config.model.name={config.model.name!r}: use one of {sorted(MODELS)}.")
  return MODELS[config.model.name](config.model, example, num_classes, nnx.Rngs(config.seed))


def build_rules(granularity: str, keep_dense: str = "") -> groups.Rules:
  """Path rules pruning every kernel at ``granularity`` (``element``, ``neurons``, ``N:M``).

  N:M groups run along axis -2, the contraction (input) axis of Flax Dense ``(in, out)`` and
  Conv ``(h, w, in, out)`` kernels. Kernels matching the ``keep_dense`` regex stay dense.
  """
  if granularity == "element":
    unit = groups.element()
  elif granularity == "neurons":
    unit = groups.neurons(axis=-1)
  elif ":" in granularity:
    n, m = (int(v) for v in granularity.split(":"))
    unit = groups.n_of_m(n, m, axis=-2)
  else:
    raise ValueError(f"Unknown granularity {granularity!r}: element, neurons or N:M.")
  dense = ((keep_dense, groups.DENSE),) if keep_dense else ()
  return dense + (groups.DEFAULT_RULES[0], (r"(^|/)kernel$", unit))


def build_schedule(pruning: ml_collections.ConfigDict) -> schedules.Schedule:
  """The configured sparsity schedule."""
  if pruning.schedule == "polynomial":
    return schedules.polynomial(0.0, pruning.final_sparsity, pruning.begin_step,
                                pruning.end_step, pruning.frequency)
  if pruning.schedule == "iterative":
    rounds = max((pruning.end_step - pruning.begin_step) // pruning.frequency + 1, 1)
    return schedules.iterative(pruning.final_sparsity, rounds, pruning.begin_step,
                               pruning.frequency)
  if pruning.schedule == "one_shot":
    return schedules.one_shot(pruning.final_sparsity, pruning.begin_step)
  raise ValueError(f"Unknown schedule {pruning.schedule!r}.")


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """AdamW wrapped by ``transforms.prune`` (``pruning.method="gradual"``) or by
  ``transforms.sparse_training`` (``"rigl"``, ``"set"``, ``"static"``) as the config says."""
  pruning = config.pruning
  adamw = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  if pruning.method != "gradual":
    return transforms.sparse_training(
        adamw, pruning.final_sparsity, method=pruning.method,
        distribution=pruning.allocation or "erk", update_every=pruning.frequency,
        end_step=pruning.end_step, drop_fraction=pruning.drop_fraction,
        rules=build_rules("element", pruning.keep_dense), seed=config.seed)
  return transforms.prune(
      adamw, build_schedule(pruning), scores.criterion(pruning.criterion, decay=pruning.ema_decay),
      rules=build_rules(pruning.granularity, pruning.keep_dense),
      selector=select.selector(pruning.scope, allocation=pruning.allocation or None))


def _report(message: str, show: bool) -> None:
  """The job's own lines: printed beside the progress bar when ``show``, logged always."""
  logging.info(message)
  if show:
    tqdm.write(message)


class NonFiniteRun(RuntimeError):
  """The run's gradients stayed non-finite: it stops instead of reporting a summary."""


def _check_nonfinite_streak(opt_state, step: int, limit: int, ckpt) -> None:
  """Raises :class:`NonFiniteRun` when the latest ``limit`` or more steps in a row had
  non-finite gradients (read from the state at log steps only: no host sync per step)."""
  streak = int(masking.find_prune_state(opt_state).nonfinite_streak)
  if streak >= limit:
    latest = ckpt.latest_step()
    ckpt.close()
    raise NonFiniteRun(
        f"The {streak} training steps up to step {step} all had non-finite gradients "
        f"(config.max_nonfinite_steps={limit}). They applied no update; the run stops without "
        f"a summary. Latest checkpoint: step {latest}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the main job and returns the summary written to ``summary.json``."""
  config_checks.check_config(config, MODELS)
  workdir = os.path.abspath(workdir)
  is_writer = jax.process_index() == 0
  show = config.progress and is_writer
  os.makedirs(workdir, exist_ok=True)
  data_dir = config.data_dir or None
  train_data = data_lib.load_split(config.dataset, config.train_split, data_dir)
  test_data = data_lib.load_split(config.dataset, config.test_split, data_dir)
  num_classes = int(max(train_data["label"].max(), test_data["label"].max())) + 1

  model = build_model(config, train_data["image"][0], num_classes)
  graphdef, state = nnx.split(model)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  params = jax.device_put(nnx.to_pure_dict(state), replicated)
  tx = build_optimizer(config)
  run_state = {"params": params, "opt_state": jax.device_put(tx.init(params), replicated)}
  meta = {"history": [], "dense_accuracy": None}

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  start_step = 0
  restored = ckpt.restore_latest(run_state)
  for step, why in ckpt.damaged:
    _report(f"Skipped the damaged checkpoint at step {step}: {why}.", show)
  if restored is not None:
    start_step, run_state, meta = restored
    _report(f"Resumed from step {start_step}.", show)

  train_step = training.make_train_step(graphdef, tx)
  accuracy = training.make_accuracy_fn(graphdef)
  stream = data_lib.batches_from_step(
      train_data, config.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())
  params, opt_state = run_state["params"], run_state["opt_state"]
  begin = config.pruning.begin_step
  block_each_step = jax.device_count() > 1 and jax.default_backend() == "cpu"
  started = time.time()
  metrics = {}
  bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
             desc="train", disable=not show)
  for step in bar:
    if step == begin and meta["dense_accuracy"] is None and config.pruning.method == "gradual":
      meta["dense_accuracy"] = accuracy(params, test_data)
      _report(f"Dense test accuracy at step {step}: {meta['dense_accuracy']:.4f}", show)
    batch = jax.make_array_from_process_local_data(batch_sharding, next(stream))
    params, opt_state, metrics = train_step(params, opt_state, batch)
    if block_each_step:  # CPU collectives dispatched far ahead can deadlock
      jax.block_until_ready(params)
    done = step + 1
    if done % config.log_every == 0 or done == config.steps:
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
      _check_nonfinite_streak(opt_state, done, config.max_nonfinite_steps, ckpt)
    if done % config.eval_every == 0 or done == config.steps:
      masks = transforms.current_masks(opt_state, params)
      entry = {"step": done, "train_loss": float(metrics["loss"]),
               "train_accuracy": float(metrics["accuracy"]),
               "test_accuracy": accuracy(params, test_data),
               "sparsity": transforms.sparsity_report(masks, params)["global"]}
      meta["history"].append(entry)
      _report(f"step {done}  loss {entry['train_loss']:.4f}  test accuracy "
              f"{entry['test_accuracy']:.4f}  sparsity {entry['sparsity']:.3f}", show)
      if is_writer:
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
          f.writelines(json.dumps(h) + "\n" for h in meta["history"])
    if done % config.checkpoint_every == 0 or done == config.steps:
      ckpt.save(done, {"params": params, "opt_state": opt_state}, meta)
    if done == config.halt_after_step:
      logging.warning("Halting after step %d as configured (simulated preemption).", done)
      ckpt.close()
      return {}
  bar.close()
  ckpt.close()

  masks = transforms.current_masks(opt_state, params)
  report = transforms.sparsity_report(masks, params)
  prunable = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)) if np.ndim(m)]
  zeros = sum(int(np.sum(np.asarray(p) == 0)) for p in prunable)
  summary = {
      "dense_accuracy": meta["dense_accuracy"],
      "final_accuracy": accuracy(params, test_data),
      "final_sparsity": report["global"],
      "zero_fraction_of_prunable": zeros / sum(np.size(p) for p in prunable),
      "criterion": config.pruning.criterion,
      "granularity": config.pruning.granularity,
      "method": config.pruning.method,
      "model": config.model.name,
      "steps": config.steps,
      "params": int(sum(np.size(p) for p in jax.tree.leaves(params))),
      "sparsity_per_layer": report,
      "skipped_nonfinite_steps": int(masking.find_prune_state(opt_state).skipped_nonfinite),
      "seconds_this_run": time.time() - started,
  }
  if is_writer:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    viz.sparsity_per_layer(report, os.path.join(workdir, "sparsity_per_layer.png"))
    viz.training_curves(meta["history"], os.path.join(workdir, "training_curves.png"))
  _report("Summary: " + json.dumps({k: v for k, v in summary.items()
                                     if k != "sparsity_per_layer"}), show)
  return summary
