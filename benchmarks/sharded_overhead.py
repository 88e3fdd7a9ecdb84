"""Cost of importance accumulation inside a sharded train step of a >= 10M-parameter model.

A 1024-2048-2048-2048-10 MLP (10.5M parameters), batch 256, trained data-parallel with
``jit`` over a ``Mesh`` of all devices: the batch is sharded, and the params (with the
optimizer, mask and importance state that follow them) are sharded FSDP-style over their first
dim (``--params replicated`` keeps one full copy per device). Three steps, jitted
with params and optimizer state donated (updated in place, as a train loop does) and timed
interleaved (median after warm-up): plain AdamW; AdamW inside
``transforms.masked`` with magnitude (masks applied, nothing accumulated); and with OBD
(an EMA of squared gradients accumulated every step), in float32 and with a bfloat16 state.
``sharded_accumulation_over_step`` is accumulating over not accumulating, both masked; the
paired column is the median of per-round ratios (the order rotates every round).

Run:
  python benchmarks/sharded_overhead.py --json /tmp/sharded_overhead.json
  python benchmarks/sharded_overhead.py --cpu_devices 8 --quick   # 8 forced CPU devices
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", default=None, help="write the figures to this JSON file")
  parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
  parser.add_argument("--params", choices=("replicated", "sharded"), default="sharded",
                      help="replicate params, or shard each leaf's first dim over the devices")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="force this many CPU devices (set before JAX starts)")
  return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.cpu_devices:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.cpu_devices}"

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position

import impjax as ij  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

WIDTHS = (1024, 2048, 2048, 2048, 10)
BATCH = 256


def init_params(seed=0):
  key = jax.random.key(seed)
  params = {}
  for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
    params[f"dense{i}"] = {
        "kernel": jax.random.normal(jax.random.fold_in(key, i), (a, b)) / np.sqrt(a),
        "bias": jnp.zeros((b,))}
  return params


def loss_fn(params, batch):
  x = batch["x"]
  layers = [params[f"dense{i}"] for i in range(len(WIDTHS) - 1)]
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  logits = x @ layers[-1]["kernel"] + layers[-1]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def make_step(tx):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step


def main():
  args = ARGS
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  n_params = sum(x.size for x in jax.tree.leaves(init_params()))
  if args.params == "sharded":  # FSDP-style: each device holds and updates a slice
    placement = jax.tree.map(lambda x: sharded if x.shape[0] % jax.device_count() == 0
                             else replicated, init_params())
  else:
    placement = replicated
  rng = np.random.default_rng(0)
  batch = jax.device_put({"x": rng.standard_normal((BATCH, WIDTHS[0])).astype(np.float32),
                          "y": rng.integers(0, 10, BATCH).astype(np.int32)}, sharded)
  schedule = ij.schedules.polynomial(0.0, 0.9, 0, 10_000, 100)  # masks update every 100 steps
  adamw = optax.adamw(1e-4, weight_decay=1e-4)
  variants = {
      "plain": adamw,
      "masked": ij.transforms.prune(adamw, schedule, "magnitude"),
      "masked+obd_ema": ij.transforms.prune(adamw, schedule, "obd"),
      "masked+obd_ema_bf16": ij.transforms.prune(
          adamw, schedule, "obd",
          estimator=lambda stat: ij.estimators.ema(stat, 0.99, dtype=jnp.bfloat16)),
  }
  state = {}
  for name, tx in variants.items():
    params = jax.device_put(init_params(), placement)  # each step donates its own copy
    state[name] = [params, jax.jit(tx.init)(params), make_step(tx)]
    for _ in range(3):  # compile and warm up, past the step-0 mask update
      p, o, step = state[name]
      state[name][:2] = jax.block_until_ready(step(p, o, batch))
  rounds = 6 if args.quick else 30
  times = {name: [] for name in variants}
  names = list(variants)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
      p, o, step = state[name]
      start = time.perf_counter()
      state[name][:2] = jax.block_until_ready(step(p, o, batch))
      times[name].append(time.perf_counter() - start)
  median = {name: float(np.median(t)) for name, t in times.items()}
  paired = {name: float(np.median(np.array(times[name]) / np.array(times["masked"])))
            for name in names}
  figures = {
      "params": int(n_params), "devices": jax.device_count(), "batch": BATCH,
      "param_placement": args.params,
      "step_seconds": median,
      "masked_over_plain": median["masked"] / median["plain"],
      "sharded_accumulation_over_step": median["masked+obd_ema"] / median["masked"],
      "accumulation_over_plain": median["masked+obd_ema"] / median["plain"],
      "bf16_accumulation_over_step": median["masked+obd_ema_bf16"] / median["masked"],
      "paired_over_masked": paired,
  }
  print(f"{n_params / 1e6:.1f}M parameters ({args.params}), batch {BATCH}, "
        f"{jax.device_count()} device(s)")
  print(common.format_table(["step", "median s", "over plain", "paired over masked"],
                            [[n, median[n], f"{median[n] / median['plain']:.3f}x",
                              f"{paired[n]:.3f}x"] for n in variants]))
  print(f"accumulation over the masked step: {figures['sharded_accumulation_over_step']:.3f}x")
  if args.json:
    common.write_json(args.json, figures)


if __name__ == "__main__":
  main()
