"""The main job: train a Flax model on a tfds dataset while pruning it gradually by importance.

``train_and_evaluate(config, workdir)`` trains data-parallel over every device of every process
(params replicated, each process feeding its share of each global batch; only process 0 writes
logs and plots, all processes join the orbax checkpoint), evaluates the dense model where pruning
begins,
prunes on the configured schedule with the configured criterion (``impjax.transforms.masked``
around AdamW), checkpoints with orbax (resuming from the latest checkpoint in ``workdir``),
and writes ``metrics.jsonl``, ``summary.json`` and plots into ``workdir``.

Example:
  >>> import tempfile
  >>> from impjax import train
  >>> config = train.default_config(quick=True)
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
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
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
from impjax import transforms
from impjax import viz


def parse_config_arg(arg: str | None) -> bool:
  """``"quick"`` -> True, ``None``/``""`` -> False; anything else is an error."""
  if arg in (None, ""):
    return False
  if arg == "quick":
    return True
  raise ValueError(f"Unknown config argument {arg!r}; use 'quick' or nothing.")


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
  """Every field the main job reads, with defaults that reproduce the digits results."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "sklearn_digits"
  config.data_dir = ""  # empty: impjax.data.DEFAULT_DATA_DIR
  config.train_split = "train"
  config.test_split = "test"

  config.model = "mlp"
  config.mlp_hidden = (256, 256)
  config.cnn_channels = (32, 64)
  config.cnn_dense = 128

  config.batch_size = 128
  config.steps = 4000
  config.learning_rate = 1e-3
  config.weight_decay = 1e-4

  config.pruning = ml_collections.ConfigDict()
  config.pruning.criterion = "obd"        # magnitude|random|saliency|taylor|fisher|obd|movement
  config.pruning.schedule = "polynomial"  # polynomial|iterative|one_shot
  config.pruning.final_sparsity = 0.9
  config.pruning.begin_step = 1500
  config.pruning.end_step = 3000
  config.pruning.frequency = 100
  config.pruning.granularity = "element"  # element|neurons|N:M such as 2:4
  config.pruning.keep_dense = ""          # regex of kernel paths left dense, e.g. "convs/0/"
  config.pruning.scope = "global"         # global|local
  config.pruning.allocation = ""          # ""|uniform|erk (erk/uniform need scope=local)
  config.pruning.ema_decay = 0.99

  config.log_every = 100
  config.eval_every = 250
  config.checkpoint_every = 500
  config.halt_after_step = -1  # >= 0: stop after this step without saving, as a preemption
  config.progress = True


  if quick:
    config.steps = 400
    config.pruning.begin_step = 100
    config.pruning.end_step = 300
    config.pruning.frequency = 50
    config.eval_every = 100
    config.checkpoint_every = 200
  return config


def build_model(config: ml_collections.ConfigDict, example: np.ndarray, num_classes: int):
  """The configured NNX model for inputs shaped like ``example`` (one example)."""
  rngs = nnx.Rngs(config.seed)
  if config.model == "mlp":
    return models.MLP(int(np.prod(example.shape)), tuple(config.mlp_hidden), num_classes,
                      rngs=rngs)
  if config.model == "cnn":
    return models.CNN(example.shape[-1], tuple(config.cnn_channels), config.cnn_dense,
                      num_classes, image_size=example.shape[0], rngs=rngs)
  raise ValueError(f"Unknown model {config.model!r}: use 'mlp' or 'cnn'.")


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
  """AdamW wrapped by ``transforms.masked`` as the config says."""
  from impjax import estimators  # pylint: disable=g-import-not-at-top
  pruning = config.pruning
  return transforms.masked(
      optax.adamw(config.learning_rate, weight_decay=config.weight_decay),
      build_schedule(pruning), pruning.criterion,
      rules=build_rules(pruning.granularity, pruning.keep_dense), scope=pruning.scope,
      allocation=pruning.allocation or None,
      estimator=lambda stat: (estimators.sum(stat) if pruning.criterion == "movement"
                              else estimators.ema(stat, decay=pruning.ema_decay)))


def cross_entropy(graphdef, params, batch):
  """Mean softmax cross-entropy of the merged model on ``batch``, and its logits."""
  logits = nnx.merge(graphdef, params)(batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, logits


def make_train_step(graphdef, tx, loss_fn=cross_entropy):
  """A jitted ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

  ``loss_fn(graphdef, params, batch) -> (loss, logits)`` defaults to :func:`cross_entropy`;
  pass a wrapped one to train otherwise (e.g. quantization-aware with
  ``impjax.transforms.quantized(cross_entropy, bits, argnum=1)``).
  """
  @jax.jit
  def train_step(params, opt_state, batch):
    (loss, logits), grads = jax.value_and_grad(
        lambda p: loss_fn(graphdef, p, batch), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return params, opt_state, {"loss": loss, "accuracy": accuracy}
  return train_step


def make_accuracy_fn(graphdef, chunk: int = 1024):
  """``(params, data) -> accuracy`` over a whole split, in jitted chunks."""
  @jax.jit
  def correct(params, images, labels):
    logits = nnx.merge(graphdef, params)(images)
    return jnp.sum(jnp.argmax(logits, -1) == labels)

  def accuracy(params, split):
    n = len(split["label"])
    total = sum(int(correct(params, split["image"][i:i + chunk], split["label"][i:i + chunk]))
                for i in range(0, n, chunk))
    return total / n
  return accuracy


def _write_json(path: str, value: Any) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the main job and returns the summary written to ``summary.json``."""
  workdir = os.path.abspath(workdir)
  is_writer = jax.process_index() == 0
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
  if restored is not None:
    start_step, run_state, meta = restored
    logging.info("Resumed from step %d.", start_step)

  train_step = make_train_step(graphdef, tx)
  accuracy = make_accuracy_fn(graphdef)
  stream = data_lib.batches_from_step(
      train_data, config.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())
  params, opt_state = run_state["params"], run_state["opt_state"]
  begin = config.pruning.begin_step
  started = time.time()
  metrics = {}
  bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
             desc="train", disable=not (config.progress and is_writer))
  for step in bar:
    if step == begin and meta["dense_accuracy"] is None:
      meta["dense_accuracy"] = accuracy(params, test_data)
      logging.info("Dense test accuracy at step %d: %.4f", step, meta["dense_accuracy"])
    batch = jax.make_array_from_process_local_data(batch_sharding, next(stream))
    params, opt_state, metrics = train_step(params, opt_state, batch)
    if jax.device_count() > 1:  # collectives dispatched far ahead can deadlock on CPU
      jax.block_until_ready(params)
    done = step + 1
    if done % config.log_every == 0 or done == config.steps:
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
    if done % config.eval_every == 0 or done == config.steps:
      masks = transforms.current_masks(opt_state, params)
      entry = {"step": done, "train_loss": float(metrics["loss"]),
               "train_accuracy": float(metrics["accuracy"]),
               "test_accuracy": accuracy(params, test_data),
               "sparsity": transforms.sparsity_report(masks, params)["global"]}
      meta["history"].append(entry)
      logging.info("step %d  loss %.4f  test accuracy %.4f  sparsity %.3f", done,
                   entry["train_loss"], entry["test_accuracy"], entry["sparsity"])
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
      "model": config.model,
      "steps": config.steps,
      "params": int(sum(np.size(p) for p in jax.tree.leaves(params))),
      "sparsity_per_layer": report,
      "seconds_this_run": time.time() - started,
  }
  if is_writer:
    _write_json(os.path.join(workdir, "summary.json"), summary)
    viz.sparsity_per_layer(report, os.path.join(workdir, "sparsity_per_layer.png"))
    viz.training_curves(meta["history"], os.path.join(workdir, "training_curves.png"))
  logging.info("Summary: %s", json.dumps({k: v for k, v in summary.items()
                                          if k != "sparsity_per_layer"}))
  return summary
