"""Cost of importance accumulation inside a sharded train step of a >= 10M-parameter model.

A 1024-2048-2048-2048-10 MLP (10.5M parameters), batch 256, trained data-parallel with
``jit`` over a ``Mesh`` of all devices: the batch is sharded, and the params (with the
optimizer, mask and importance state that follow them) are sharded FSDP-style over their first
dim (``--params replicated`` keeps one full copy per device). Three steps, jitted
with params and optimizer state donated (updated in place, as a train loop does) and timed
interleaved (median after warm-up): plain AdamW; AdamW inside
``transforms.prune`` with magnitude (masks applied, nothing accumulated); and with OBD
(an EMA of squared gradients accumulated every step), in float32 and with a bfloat16 state.
``sharded_accumulation_over_step`` is accumulating over not accumulating, both masked; the
paired column is the median of per-round ratios (the order rotates every round).

Run:
  python benchmarks/speed/sharded_overhead.py --json /tmp/sharded_overhead.json
  python benchmarks/speed/sharded_overhead.py --cpu_devices 8 --quick   # 8 forced CPU devices
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

import impjax as ij  # pylint: disable=g-import-not-at-top,wrong-import-position

WIDTHS = (1024, 2048, 2048, 2048, 10)
BATCH = 256
WARMUP = 3  # steps per variant, past the step-0 mask update


def parse_args():
  parser = harness.parser(__doc__, "fewer timing rounds")
  parser.add_argument("--params", choices=("replicated", "sharded"), default="sharded",
                      help="replicate params, or shard each leaf's first dim over the devices")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="force this many CPU devices (set before JAX starts)")
  return parser.parse_args()


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


def placement_and_batch(params: str, seed: int):
  """The params' shardings over a mesh of all devices (``sharded``: FSDP-style, each leaf's
  first dim where it divides; or ``replicated``), and a random batch sharded over the mesh."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  if params == "sharded":  # FSDP-style: each device holds and updates a slice
    placement = jax.tree.map(lambda x: sharded if x.shape[0] % jax.device_count() == 0
                             else replicated, init_params(seed))
  else:
    placement = replicated
  rng = np.random.default_rng(seed)
  batch = jax.device_put({"x": rng.standard_normal((BATCH, WIDTHS[0])).astype(np.float32),
                          "y": rng.integers(0, 10, BATCH).astype(np.int32)}, sharded)
  return placement, batch


def make_variants():
  schedule = ij.schedules.polynomial(0.0, 0.9, 0, 10_000, 100)  # masks update every 100 steps
  adamw = optax.adamw(1e-4, weight_decay=1e-4)
  return {
      "plain": adamw,
      "masked": ij.transforms.prune(adamw, schedule, "magnitude"),
      "masked+obd_ema": ij.transforms.prune(adamw, schedule, "obd"),
      "masked+obd_ema_bf16": ij.transforms.prune(
          adamw, schedule, "obd",
          estimator=lambda stat: ij.estimators.ema(stat, 0.99, dtype=jnp.bfloat16)),
  }


def time_variants(variants, placement, batch, rounds, seed):
  """Per-round seconds of every variant's step: warmed up, then timed in rotating order."""
  state = {}
  for name, tx in variants.items():
    params = jax.device_put(init_params(seed), placement)  # each step donates its own copy
    state[name] = [params, jax.jit(tx.init)(params), make_step(tx)]
  calls = {name: (lambda i, name=name: state[name][2](*state[name][:2], batch))
           for name in variants}

  def keep(name, i, outputs):
    del i
    state[name][:2] = outputs

  harness.interleaved(calls, WARMUP, on_result=keep)  # compile and warm up
  return harness.interleaved(calls, rounds, on_result=keep)


def main():
  args = parse_args()
  if args.cpu_devices:  # raises if JAX has started already
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  n_params = harness.tree_size(init_params(args.seed))
  placement, batch = placement_and_batch(args.params, args.seed)
  variants = make_variants()
  times = time_variants(variants, placement, batch, 6 if args.quick else 30, args.seed)
  median = {name: harness.median(t) for name, t in times.items()}
  paired = {name: harness.median(times[name] / times["masked"]) for name in variants}
  figures = {
      "params": n_params, "devices": jax.device_count(), "batch": BATCH,
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
  print(harness.format_table(["step", "median s", "over plain", "paired over masked"],
                             [[n, median[n], f"{median[n] / median['plain']:.3f}x",
                               f"{paired[n]:.3f}x"] for n in variants]))
  print(f"accumulation over the masked step: {figures['sharded_accumulation_over_step']:.3f}x")
  harness.write_json(args.json, figures)


if __name__ == "__main__":
  main()
