"""Bytes per parameter of each transform's state, with and without the memory options.

For the digits CNN of the default config: the optimizer state of AdamW alone, and of AdamW
inside ``transforms.masked`` with masks as bools or bit-packed (``pack=True``) and the OBD
importance estimate (an EMA of squared gradients) in float32 or bfloat16. Bytes are the sizes
of the state's arrays; "over adamw" is the extra state impjax adds, per parameter.

Run:
  python benchmarks/state_memory.py --json /tmp/state_memory.json
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import schedules
from impjax import train
from impjax import transforms


def state_bytes(tx, params) -> int:
  state = jax.eval_shape(tx.init, params)
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(state)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", default=None, help="write the figures to this JSON file")
  parser.add_argument("--quick", action="store_true", help="same run (it takes seconds)")
  args = parser.parse_args()
  config = train.default_config()
  config.model = "cnn"
  train_data, _, num_classes = common.load_digits(config)
  _, params = common.init_model(config, train_data, num_classes)
  n = sum(x.size for x in jax.tree.leaves(params))
  adamw = optax.adamw(1e-3)
  sched = schedules.polynomial(0.0, 0.9, 0, 1000, 100)
  variants = {
      "adamw": adamw,
      "masked (magnitude, bool masks)": transforms.prune(adamw, sched, "magnitude"),
      "masked (magnitude, packed masks)": transforms.prune(adamw, sched, "magnitude",
                                                            pack=True),
      "masked (obd f32 EMA, bool masks)": transforms.prune(adamw, sched, "obd"),
      "masked (obd bf16 EMA, packed masks)": transforms.prune(
          adamw, sched, "obd", pack=True,
          estimator=functools.partial(estimators.ema, decay=0.99, dtype=jnp.bfloat16)),
  }
  base = state_bytes(adamw, params)
  rows = []
  for name, tx in variants.items():
    total = state_bytes(tx, params)
    rows.append({"transform": name, "bytes_per_param": total / n,
                 "extra_bytes_per_param": (total - base) / n})
  print(f"digits CNN, {n} parameters")
  print(common.format_table(["state", "bytes/param", "over adamw"],
                            [[r["transform"], r["bytes_per_param"],
                              r["extra_bytes_per_param"]] for r in rows]))
  if args.json:
    common.write_json(args.json, {
        "params": int(n), "state_bytes_per_param": rows,
        "extra_bytes_per_param": {r["transform"]: r["extra_bytes_per_param"] for r in rows}})


if __name__ == "__main__":
  main()
