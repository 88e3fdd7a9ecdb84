"""Step-time overhead of pruning during training: dense vs masked vs masked with importance.

What it measures: the wall time of one jitted training step of the digits CNN
(``impjax.models.CNN`` exactly as ``configs/default.py``'s ``get_config()`` with
``model.name="cnn"`` builds it: 3x3 convs of 32 and 64 channels, dense 128, head 10), batch
256, for

* ``dense``: plain AdamW (the config's lr and weight decay);
* ``masked``: the same AdamW inside ``impjax.transforms.prune(..., criterion="magnitude")``
  — masks applied to gradients and updates, no statistic accumulated;
* ``masked_with_importance``: ``criterion="obd"`` with the EMA estimator (decay 0.99), so
  every step also accumulates the squared-gradient statistic.

Both masked variants are built by ``launch/train.py``'s ``build_optimizer`` (the main job's own
optimizer) with the default polynomial schedule's frequency: masks are re-selected every 100
steps, and those update steps fall inside the timed loop (the schedule's window is moved to
start with the benchmark, ``begin_step=0``, and to end after the last timed step), ramping
towards 90% sparsity as in training. All three steps come from
``impjax.flax.training.make_train_step``, are jitted, and see the same pre-placed batches.

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

  python benchmarks/speed/step_overhead.py               # 10 rounds (~3 min on 2 CPUs)
  python benchmarks/speed/step_overhead.py --json /tmp/step_overhead.json
  python benchmarks/speed/step_overhead.py --quick       # < 1 minute: 3 rounds of 20 steps,
                                                         # so updates weigh 5x more
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.transforms import masking  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch import train  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = ("dense", "masked", "masked_with_importance")
CRITERION = {"masked": "magnitude", "masked_with_importance": "obd"}
BATCH = 256
TARGETS = {"masked_over_dense": 1.10, "masked_with_importance_over_dense": 1.20}


def parse_args(argv=None):
  parser = harness.parser(__doc__, "3 rounds of 20 steps (< 1 minute)")
  parser.add_argument("--rounds", type=int, default=None,
                      help="timed rounds of one schedule period per variant (default 10, quick 3)")
  parser.add_argument("--frequency", type=int, default=None,
                      help="steps between mask updates (default: config.pruning.frequency = 100, quick 20)")
  return parser.parse_args(argv)


def build_variants(config, graphdef, params, frequency, end_step):
  """``{name: (jitted train_step, opt_state)}`` for the three variants."""
  out = {}
  dense_tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  out["dense"] = (training.make_train_step(graphdef, dense_tx), dense_tx.init(params))
  for name, criterion in CRITERION.items():
    cfg = config.copy_and_resolve_references()
    cfg.pruning.criterion = criterion
    cfg.pruning.schedule = "polynomial"
    cfg.pruning.begin_step = 0
    cfg.pruning.end_step = end_step
    cfg.pruning.frequency = frequency
    tx = train.build_optimizer(cfg)
    out[name] = (training.make_train_step(graphdef, tx), tx.init(params))
  return out


def time_steps(variants, params, batches, rounds):
  """Per-step seconds ``{name: [rounds, len(batches)]}`` and the final ``(params, opt_state)``.

  A warm-up runs one full period of every variant untimed (compilation and an update step).
  Steps are interleaved one by one (order rotated every step), so the three variants see the
  same background load. Step k of a period is an update step of the masked variants when
  warmup + r * frequency + k is on the schedule grid, i.e. when k == 0.
  """
  state = {name: (params, opt_state) for name, (_, opt_state) in variants.items()}
  frequency = len(batches)
  calls = {name: (lambda i, name=name: variants[name][0](*state[name], batches[i % frequency]))
           for name in VARIANTS}

  def keep(name, i, outputs):
    del i
    state[name] = outputs[:2]

  harness.interleaved(calls, frequency, on_result=keep)  # warm-up: one untimed period
  times = harness.interleaved(calls, rounds * frequency, on_result=keep)
  return {name: t.reshape(rounds, frequency) for name, t in times.items()}, state


def variant_stats(times, frequency):
  """Steady, update, amortized and round-mean milliseconds, and the paired ratio to dense."""
  stats = {}
  for name in VARIANTS:
    t = times[name]  # [rounds, frequency]
    steady = float(np.median(t[:, 1:]))
    update = float(np.median(t[:, 0]))
    stats[name] = {"steady_ms": 1e3 * steady, "update_ms": 1e3 * update,
                   "amortized_ms": 1e3 * ((frequency - 1) * steady + update) / frequency,
                   "round_mean_ms": 1e3 * float(np.median(t.mean(axis=1))),
                   "paired_steady_ratio": float(np.median(t[:, 1:] / times["dense"][:, 1:]))}
  return stats


def figures(stats, frequency, rounds, final_sparsity):
  """The JSON figures: ratios to dense (amortized, steady, round-mean, paired) and the setup."""
  ratio = lambda name, key: stats[name][key] / stats["dense"][key]
  return {
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
      "targets": dict(TARGETS),
  }


def report(result):
  stats, frequency, rounds = result["per_variant"], result["frequency"], result["rounds"]
  print(f"Digits CNN, batch {BATCH}, {jax.default_backend()} ({len(jax.devices())} device), "
        f"mask update every {frequency} steps, {rounds} rounds x {frequency} timed steps per "
        f"variant; sparsity reached {result['sparsity_at_end']:.3f}\n")
  ratio = lambda name, key: stats[name][key] / stats["dense"][key]
  rows = []
  for name in VARIANTS:
    s = stats[name]
    rows.append([name, s["steady_ms"], s["update_ms"], s["amortized_ms"], s["round_mean_ms"],
                 ratio(name, "steady_ms"), s["paired_steady_ratio"], ratio(name, "amortized_ms"),
                 ratio(name, "round_mean_ms")])
  print(harness.format_table(["variant", "steady ms", "update-step ms", "amortized ms",
                              "round-mean ms", "steady x", "paired x", "amortized x",
                              "round-mean x"], rows))
  for key, target in result["targets"].items():
    verdict = "meets" if result[key] <= target else "MISSES"
    print(f"{key} = {result[key]:.3f} (amortized; steady "
          f"{result['steady_' + key]:.3f}) {verdict} target <= {target:.2f}")


def main(argv=None):
  args = parse_args(argv)
  config = harness.digits_config("cnn", args.seed)
  frequency = args.frequency or (20 if args.quick else config.pruning.frequency)
  rounds = args.rounds or (3 if args.quick else 10)
  warmup = frequency  # one full period per variant, untimed
  end_step = warmup + rounds * frequency  # every timed step lies inside the pruning window
  started = time.time()
  train_data, _, num_classes = harness.load_digits(config)
  graphdef, params = harness.init_model(config, train_data, num_classes)
  stream = data_lib.batches_from_step(train_data, BATCH, seed=config.seed)
  batches = [jax.device_put(next(stream)) for _ in range(frequency)]  # same data for all
  variants = build_variants(config, graphdef, params, frequency, end_step)
  times, state = time_steps(variants, params, batches, rounds)
  masks = masking.find_prune_state(state["masked_with_importance"][1]).masks
  result = figures(variant_stats(times, frequency), frequency, rounds,
                   transforms.sparsity_report(masks, params)["global"])
  report(result)
  result["seconds"] = time.time() - started
  print(f"\nTotal time {result['seconds']:.1f}s")
  harness.write_json(args.json, result)


if __name__ == "__main__":
  main()
