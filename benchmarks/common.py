"""Shared pieces of the benchmarks: digits data and model, dense training, tables, JSON.

Everything model- and training-related comes from :mod:`impjax.train` (the same config,
model, loss, train step and accuracy function as the main job); this module only strings
them together so the benchmarks do not repeat it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from flax import nnx
import ml_collections
import optax

from impjax import data as data_lib
from impjax import train


def load_digits(config: ml_collections.ConfigDict) -> tuple[dict, dict, int]:
  """``(train, test, num_classes)`` of the configured dataset, as the main job loads them."""
  data_dir = config.data_dir or None
  train_data = data_lib.load_split(config.dataset, config.train_split, data_dir)
  test_data = data_lib.load_split(config.dataset, config.test_split, data_dir)
  num_classes = int(max(train_data["label"].max(), test_data["label"].max())) + 1
  return train_data, test_data, num_classes


def init_model(config: ml_collections.ConfigDict, train_data: dict, num_classes: int):
  """``(graphdef, params)`` of the configured model (params a pure dict, as the main job)."""
  model = train.build_model(config, train_data["image"][0], num_classes)
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def train_dense(config: ml_collections.ConfigDict, train_data: dict, num_classes: int,
                steps: int):
  """Trains the configured model for ``steps`` AdamW steps without pruning.

  Same model init, data stream (``batches_from_step`` seeded by ``config.seed``), optimizer
  hyper-parameters and train step as ``impjax.train.train_and_evaluate``; before its pruning
  begins, the masked wrapper there is the identity, so this is exactly its dense phase.

  Returns:
    ``(graphdef, params)``.
  """
  graphdef, params = init_model(config, train_data, num_classes)
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = tx.init(params)
  step_fn = train.make_train_step(graphdef, tx)
  stream = data_lib.batches_from_step(train_data, config.batch_size, seed=config.seed)
  for _ in range(steps):
    params, opt_state, _ = step_fn(params, opt_state, next(stream))
  return graphdef, params


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain-text table; floats are printed with 4 decimals."""
  cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
  widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write_json(path: str, value: Any) -> None:
  """Writes ``value`` as indented JSON, creating the parent directory."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=2)
