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

The second part times the optimizer's share on a 10M-parameter model, where it weighs most:
``impjax.models.MLP(784, (2048, 2048, 2048), 10)`` (10.02M parameters), batch 256 of random
28x28 images, the same step function for every variant (loss, gradients, ``tx.update``,
``optax.apply_updates``), once jitted as ``make_train_step`` does and once with the params and
optimizer state donated (``donate_argnums=(0, 1)``, as Flax train loops usually jit). Variants:

* ``adamw``: plain ``optax.adamw``;
* ``adamw_if_finite``: ``optax.apply_if_finite(adamw)``, optax's own finiteness guard and no
  masks (what a guard alone costs);
* ``masked``: ``impjax.transforms.prune(adamw, polynomial schedule to 90%, "magnitude")``:
  gradients masked, pruned weights pinned at zero, the finiteness guard on;
* ``masked_packed``: the same with ``pack=True`` (bit-packed masks);
* ``jaxpruner``: where ``jaxpruner`` imports (it needs ``jax.tree_map``, removed from JAX;
  this script restores it as ``jax.tree.map`` before importing), its ``MagnitudePruning`` with
  the same polynomial schedule, ``wrap_optax(adamw)`` and ``post_gradient_update`` after every
  step, as its README trains: its defaults mask no gradients and guard nothing.

Each round runs one schedule period (one mask update) of every variant, interleaved step by
step. ``masked_over_adamw`` is the amortized ratio without donation (``donated`` has the same
figures with donation); ``paired`` ratios are medians over steps of the ratio to the adamw step
taken next to it.

Run (from the repository root):

  python benchmarks/speed/step_overhead.py               # 10 rounds (~3 min on 2 CPUs)
  python benchmarks/speed/step_overhead.py --json /tmp/step_overhead.json
  python benchmarks/speed/step_overhead.py --quick       # ~2 minutes: fewer, shorter rounds,
                                                         # so updates weigh 5x more
  PYTHONPATH=/path/to/jaxpruner python benchmarks/speed/step_overhead.py   # with jaxpruner
"""

from __future__ import annotations

import os
import sys
import time

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import schedules  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.transforms import masking  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch import train  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = ("dense", "masked", "masked_with_importance")
CRITERION = {"masked": "magnitude", "masked_with_importance": "obd"}
BATCH = 256
TARGETS = {"masked_over_dense": 1.10, "masked_with_importance_over_dense": 1.20}
MLP_WIDTHS = (2048, 2048, 2048)
MLP_TARGET = 1.02  # masked_over_adamw


def parse_args(argv=None):
  parser = harness.parser(__doc__, "3 rounds of 20 steps (< 1 minute)")
  parser.add_argument("--rounds", type=int, default=None,
                      help="timed rounds of one schedule period per variant (default 10, quick 3)")
  parser.add_argument("--mlp-rounds", type=int, default=None,
                      help="timed rounds of the 10M-parameter MLP part (default 3, quick 1)")
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
  # Copies, so a variant that donates its buffers does not free another's.
  state = {name: (jax.tree.map(jnp.copy, params), opt_state)
           for name, (_, opt_state) in variants.items()}
  frequency = len(batches)
  calls = {name: (lambda i, name=name: variants[name][0](*state[name], batches[i % frequency]))
           for name in variants}

  def keep(name, i, outputs):
    del i
    state[name] = outputs[:2]

  harness.interleaved(calls, frequency, on_result=keep)  # warm-up: one untimed period
  times = harness.interleaved(calls, rounds * frequency, on_result=keep)
  return {name: t.reshape(rounds, frequency) for name, t in times.items()}, state


def variant_stats(times, frequency, baseline="dense"):
  """Steady, update, amortized and round-mean milliseconds, and the paired ratio to
  ``baseline``."""
  stats = {}
  for name in times:
    t = times[name]  # [rounds, frequency]
    steady = float(np.median(t[:, 1:]))
    update = float(np.median(t[:, 0]))
    stats[name] = {"steady_ms": 1e3 * steady, "update_ms": 1e3 * update,
                   "amortized_ms": 1e3 * ((frequency - 1) * steady + update) / frequency,
                   "round_mean_ms": 1e3 * float(np.median(t.mean(axis=1))),
                   "paired_steady_ratio": float(np.median(t[:, 1:] / times[baseline][:, 1:]))}
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


def load_jaxpruner():
  """The ``jaxpruner`` module, or ``None`` where it does not import."""
  if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map  # removed from JAX; jaxpruner still calls it
  try:
    import jaxpruner  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return jaxpruner


def mlp_step(graphdef, tx, post_update, donate):
  """The jitted step every MLP variant runs; ``post_update(params, opt_state)`` after the update
  (jaxpruner's ``post_gradient_update``, else the identity)."""
  def step(params, opt_state, batch):
    grads = jax.grad(lambda p: training.cross_entropy(graphdef, p, batch)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return post_update(optax.apply_updates(params, updates), opt_state), opt_state
  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def mlp_variants(graphdef, params, frequency, end_step, donate, jaxpruner):
  """``{name: (jitted step, opt_state)}`` of the MLP part."""
  adamw = optax.adamw(1e-3, weight_decay=1e-4)
  schedule = schedules.polynomial(0.0, 0.9, begin_step=0, end_step=end_step,
                                  frequency=frequency)
  keep = lambda p, s: p
  txs = {"adamw": (adamw, keep),
         "adamw_if_finite": (optax.apply_if_finite(adamw, max_consecutive_errors=10**6), keep),
         "masked": (transforms.prune(adamw, schedule, "magnitude"), keep),
         "masked_packed": (transforms.prune(adamw, schedule, "magnitude", pack=True), keep)}
  if jaxpruner is not None:
    pruner = jaxpruner.MagnitudePruning(
        scheduler=jaxpruner.PolynomialSchedule(update_freq=frequency, update_start_step=0,
                                               update_end_step=end_step),
        sparsity_distribution_fn=functools.partial(
            jaxpruner.sparsity_distributions.uniform, sparsity=0.9))
    txs["jaxpruner"] = (pruner.wrap_optax(adamw), pruner.post_gradient_update)
  return {name: (mlp_step(graphdef, tx, post, donate), tx.init(params))
          for name, (tx, post) in txs.items()}


def mlp_part(rounds, frequency, seed):
  """Per-variant stats of the 10M-parameter MLP, without and with donation, and the figures."""
  model = models.MLP(28 * 28, MLP_WIDTHS, 10, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(seed)
  batches = [jax.device_put({"image": rng.normal(size=(BATCH, 28, 28, 1)).astype(np.float32),
                             "label": rng.integers(0, 10, BATCH).astype(np.int32)})
             for _ in range(frequency)]
  jaxpruner = load_jaxpruner()
  end_step = (rounds + 1) * frequency
  out = {"parameters": harness.tree_size(params), "jaxpruner": jaxpruner is not None}
  for mode, donate in (("plain", False), ("donated", True)):
    variants = mlp_variants(graphdef, params, frequency, end_step, donate, jaxpruner)
    times, _ = time_steps(variants, params, batches, rounds)
    stats = variant_stats(times, frequency, baseline="adamw")
    ratios = {f"{name}_over_adamw": stats[name]["amortized_ms"] / stats["adamw"]["amortized_ms"]
              for name in stats if name != "adamw"}
    ratios.update({f"paired_{name}_over_adamw": stats[name]["paired_steady_ratio"]
                   for name in stats if name != "adamw"})
    out[mode] = {"per_variant": stats, **ratios}
  out["masked_over_adamw"] = out["plain"]["masked_over_adamw"]
  return out


def mlp_report(mlp, frequency, rounds):
  print(f"\n{mlp['parameters'] / 1e6:.2f}M-parameter MLP {MLP_WIDTHS}, batch {BATCH}, "
        f"{rounds} rounds x {frequency} timed steps per variant (one mask update each)"
        + ("" if mlp["jaxpruner"] else "; jaxpruner not importable, its row left out") + "\n")
  rows = []
  for mode in ("plain", "donated"):
    stats = mlp[mode]["per_variant"]
    for name, s in stats.items():
      rows.append([mode, name, s["steady_ms"], s["update_ms"], s["amortized_ms"],
                   s["amortized_ms"] / stats["adamw"]["amortized_ms"], s["paired_steady_ratio"]])
  print(harness.format_table(["jit", "variant", "steady ms", "update-step ms", "amortized ms",
                              "amortized x adamw", "paired x adamw"], rows))
  verdict = "meets" if mlp["masked_over_adamw"] <= MLP_TARGET else "MISSES"
  print(f"masked_over_adamw = {mlp['masked_over_adamw']:.3f} (donated "
        f"{mlp['donated']['masked_over_adamw']:.3f}) {verdict} target <= {MLP_TARGET:.2f}")


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
  mlp_rounds = args.mlp_rounds or (1 if args.quick else 3)
  mlp = mlp_part(mlp_rounds, frequency, args.seed)
  mlp_report(mlp, frequency, mlp_rounds)
  result["mlp"] = mlp
  result["masked_over_adamw"] = mlp["masked_over_adamw"]
  result["seconds"] = time.time() - started
  print(f"\nTotal time {result['seconds']:.1f}s")
  harness.write_json(args.json, result)


if __name__ == "__main__":
  main()
