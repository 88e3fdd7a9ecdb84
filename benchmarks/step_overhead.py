"""Step-time overhead of pruning during training: dense vs masked vs masked with importance.

What it measures: the wall time of one jitted training step of the digits CNN
(``impjax.models.CNN`` exactly as ``impjax.train.default_config()`` with ``model="cnn"``
builds it: 3x3 convs of 32 and 64 channels, dense 128, head 10), batch 256, for

* ``dense``: plain AdamW (the config's lr and weight decay);
* ``masked``: the same AdamW inside ``impjax.transforms.prune(..., criterion="magnitude")``
  — masks applied to gradients and updates, no statistic accumulated;
* ``masked_with_importance``: ``criterion="obd"`` with the EMA estimator (decay 0.99), so
  every step also accumulates the squared-gradient statistic.

Both masked variants are built by ``impjax.train.build_optimizer`` (the main job's own
optimizer) with the default polynomial schedule's frequency: masks are re-selected every 100
steps, and those update steps fall inside the timed loop (the schedule's window is moved to
start with the benchmark, ``begin_step=0``, and to end after the last timed step), ramping
towards 90% sparsity as in training. All three steps come from ``impjax.train.make_train_step``,
are jitted, and see the same pre-placed batches.

Timing: after a warm-up (compilation and one full 100-step schedule period per variant, not
timed), ``--rounds`` rounds each run one full period (100 steps, exactly one mask update) of
every variant. The variants are interleaved step by step (dense, masked, importance, then
the order rotated), so all three see the same background load, and every step is timed
individually up to ``block_until_ready`` of its outputs. Reported per variant:

* ``steady``: median time of the non-update steps;
* ``update``: median time of the mask-update steps (dense has none; its median over the same
  step positions is shown);
* ``amortized``: ``((f - 1) * steady + update) / f`` with ``f = 100`` (the realistic mix);
* ``round_mean``: median over rounds of the mean step time of a whole period (a cross-check of
  ``amortized`` that includes every outlier);
* ``paired``: median over step positions of the ratio to the dense step taken next to it
  (non-update steps; robust to load drifting during the run).

The headline ratios ``masked_over_dense`` and ``masked_with_importance_over_dense`` are the
amortized ones; the steady-state ratios are reported too. Targets: masked <= 1.10x dense,
with importance <= 1.20x.

Run (from the repository root):

  python benchmarks/step_overhead.py                     # 10 rounds (~3 min on 2 CPUs)
  python benchmarks/step_overhead.py --json /tmp/step_overhead.json
  python benchmarks/step_overhead.py --quick             # < 1 minute: 3 rounds of 20 steps,
                                                         # so updates weigh 5x more
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import train
from impjax import transforms
from impjax.transforms import masking

VARIANTS = ("dense", "masked", "masked_with_importance")
CRITERION = {"masked": "magnitude", "masked_with_importance": "obd"}
BATCH = 256


def build_variants(config, graphdef, params, frequency, end_step):
  """``{name: (jitted train_step, opt_state)}`` for the three variants."""
  out = {}
  dense_tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  out["dense"] = (train.make_train_step(graphdef, dense_tx), dense_tx.init(params))
  for name, criterion in CRITERION.items():
    cfg = config.copy_and_resolve_references()
    cfg.pruning.criterion = criterion
    cfg.pruning.schedule = "polynomial"
    cfg.pruning.begin_step = 0
    cfg.pruning.end_step = end_step
    cfg.pruning.frequency = frequency
    tx = train.build_optimizer(cfg)
    out[name] = (train.make_train_step(graphdef, tx), tx.init(params))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=None,
                      help="timed rounds of one schedule period per variant (default 10, quick 3)")
  parser.add_argument("--frequency", type=int, default=None,
                      help="steps between mask updates (default: config.pruning.frequency = 100, quick 20)")
  parser.add_argument("--json", default=None, help="write results as JSON here")
  parser.add_argument("--quick", action="store_true", help="3 rounds of 20 steps (< 1 minute)")
  args = parser.parse_args(argv)

  config = train.default_config()
  config.model = "cnn"
  frequency = args.frequency or (20 if args.quick else config.pruning.frequency)
  rounds = args.rounds or (3 if args.quick else 10)
  warmup = frequency  # one full period per variant, untimed
  end_step = warmup + rounds * frequency  # every timed step lies inside the pruning window

  started = time.time()
  train_data, _, num_classes = common.load_digits(config)
  graphdef, params = common.init_model(config, train_data, num_classes)
  stream = data_lib.batches_from_step(train_data, BATCH, seed=config.seed)
  batches = [jax.device_put(next(stream)) for _ in range(frequency)]  # same data for all

  variants = build_variants(config, graphdef, params, frequency, end_step)
  state = {name: (params, opt_state) for name, (_, opt_state) in variants.items()}

  def one_step(name, batch):
    step_fn = variants[name][0]
    p, o = state[name]
    t0 = time.perf_counter()
    p, o, metrics = step_fn(p, o, batch)
    jax.block_until_ready((p, o, metrics))
    state[name] = (p, o)
    return time.perf_counter() - t0

  for name in VARIANTS:  # compile + one full untimed period (includes an update step)
    for batch in batches:
      one_step(name, batch)

  # Steps are interleaved one by one (order rotated every step), so the three variants see
  # the same background load. Step k of a period is an update step of the masked variants
  # when warmup + r * frequency + k is on the schedule grid, i.e. when k == 0.
  times = {name: np.zeros((rounds, frequency)) for name in VARIANTS}
  for r in range(rounds):
    for k, batch in enumerate(batches):
      shift = (r * frequency + k) % len(VARIANTS)
      for name in VARIANTS[shift:] + VARIANTS[:shift]:
        times[name][r, k] = one_step(name, batch)

  stats = {}
  for name in VARIANTS:
    t = times[name]  # [rounds, frequency]
    steady = float(np.median(t[:, 1:]))
    update = float(np.median(t[:, 0]))
    stats[name] = {"steady_ms": 1e3 * steady, "update_ms": 1e3 * update,
                   "amortized_ms": 1e3 * ((frequency - 1) * steady + update) / frequency,
                   "round_mean_ms": 1e3 * float(np.median(t.mean(axis=1))),
                   "paired_steady_ratio": float(np.median(t[:, 1:] / times["dense"][:, 1:]))}

  masks = masking.find_prune_state(state["masked_with_importance"][1]).masks
  final_sparsity = transforms.sparsity_report(masks, params)["global"]
  ratio = lambda name, key: stats[name][key] / stats["dense"][key]
  result = {
      "masked_over_dense": ratio("masked", "amortized_ms"),
      "masked_with_importance_over_dense": ratio("masked_with_importance", "amortized_ms"),
      "steady_masked_over_dense": ratio("masked", "steady_ms"),
      "steady_masked_with_importance_over_dense": ratio("masked_with_importance", "steady_ms"),
      "round_mean_masked_over_dense": ratio("masked", "round_mean_ms"),
      "round_mean_masked_with_importance_over_dense":
          ratio("masked_with_importance", "round_mean_ms"),
      "paired_masked_over_dense": stats["masked"]["paired_steady_ratio"],
      "paired_masked_with_importance_over_dense":
          stats["masked_with_importance"]["paired_steady_ratio"],
      "per_variant": stats, "model": "cnn", "batch_size": BATCH, "frequency": frequency,
      "rounds": rounds, "timed_steps_per_variant": rounds * frequency,
      "sparsity_at_end": final_sparsity, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "targets": {"masked_over_dense": 1.10, "masked_with_importance_over_dense": 1.20},
  }

  print(f"Digits CNN, batch {BATCH}, {jax.default_backend()} ({len(jax.devices())} device), "
        f"mask update every {frequency} steps, {rounds} rounds x {frequency} timed steps per "
        f"variant; sparsity reached {final_sparsity:.3f}\n")
  rows = []
  for name in VARIANTS:
    s = stats[name]
    rows.append([name, s["steady_ms"], s["update_ms"], s["amortized_ms"], s["round_mean_ms"],
                 ratio(name, "steady_ms"), s["paired_steady_ratio"], ratio(name, "amortized_ms"),
                 ratio(name, "round_mean_ms")])
  print(common.format_table(["variant", "steady ms", "update-step ms", "amortized ms",
                             "round-mean ms", "steady x", "paired x", "amortized x",
                             "round-mean x"], rows))
  for key, target in result["targets"].items():
    verdict = "meets" if result[key] <= target else "MISSES"
    print(f"{key} = {result[key]:.3f} (amortized; steady "
          f"{result['steady_' + key]:.3f}) {verdict} target <= {target:.2f}")
  result["seconds"] = time.time() - started
  print(f"\nTotal time {result['seconds']:.1f}s")
  if args.json:
    common.write_json(args.json, result)


if __name__ == "__main__":
  main()
