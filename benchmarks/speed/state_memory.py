"""Bytes per parameter of each transform's state, with and without the memory options.

For the digits CNN of the default config: the optimizer state of AdamW alone, and of AdamW
inside ``transforms.prune`` with masks as bools or bit-packed (``pack=True``) and the OBD
importance estimate (an EMA of squared gradients) in float32 or bfloat16. Bytes are the sizes
of the state's arrays; "over adamw" is the extra state impjax adds, per parameter.

Run:
  python benchmarks/speed/state_memory.py --json /tmp/state_memory.json
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import schedules  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position


def state_bytes(tx, params) -> int:
  return harness.tree_bytes(jax.eval_shape(tx.init, params))


def make_variants():
  adamw = optax.adamw(1e-3)
  sched = schedules.polynomial(0.0, 0.9, 0, 1000, 100)
  return {
      "adamw": adamw,
      "masked (magnitude, bool masks)": transforms.prune(adamw, sched, "magnitude"),
      "masked (magnitude, packed masks)": transforms.prune(adamw, sched, "magnitude",
                                                           pack=True),
      "masked (obd f32 EMA, bool masks)": transforms.prune(adamw, sched, "obd"),
      "masked (obd bf16 EMA, packed masks)": transforms.prune(
          adamw, sched, "obd", pack=True,
          estimator=functools.partial(estimators.ema, decay=0.99, dtype=jnp.bfloat16)),
  }


def main():
  args = harness.parser(__doc__, "same run (it takes seconds)").parse_args()
  config = harness.digits_config("cnn", args.seed)
  train_data, _, num_classes = harness.load_digits(config)
  _, params = harness.init_model(config, train_data, num_classes)
  n = harness.tree_size(params)
  variants = make_variants()
  base = state_bytes(variants["adamw"], params)
  rows = []
  for name, tx in variants.items():
    total = state_bytes(tx, params)
    rows.append({"transform": name, "bytes_per_param": total / n,
                 "extra_bytes_per_param": (total - base) / n})
  print(f"digits CNN, {n} parameters")
  print(harness.format_table(["state", "bytes/param", "over adamw"],
                             [[r["transform"], r["bytes_per_param"],
                               r["extra_bytes_per_param"]] for r in rows]))
  harness.write_json(args.json, {
      "params": n, "state_bytes_per_param": rows,
      "extra_bytes_per_param": {r["transform"]: r["extra_bytes_per_param"] for r in rows}})


if __name__ == "__main__":
  main()
