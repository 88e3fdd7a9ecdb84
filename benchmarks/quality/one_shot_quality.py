"""One-shot pruning quality: test accuracy of a trained digits model pruned without fine-tuning.

What it measures (METHODS.md section 5, first claim): a digits model is trained densely, then
pruned without any fine-tuning, to 50/70/80/90/95% sparsity by each criterion —
``magnitude``, ``random``, ``saliency``, ``taylor``, ``fisher``, ``obd`` — with global scope,
element granularity and the default rules (every ``kernel`` pruned, biases dense), and the
pruned model's accuracy on the test split is reported. The claim checked is that at 90%
sparsity the data-aware criteria keep more accuracy than magnitude, and magnitude more than
random: ``obd, taylor >= magnitude > random`` (on the mean over seeds). Pruned in one cut,
Taylor and OBD fall behind magnitude at 90% (their per-weight estimates do not survive removing
90% at once); ``taylor xR``/``obd xR`` prune in R re-scored cuts with no weight update
(``pruning.prune_in_rounds``), which is where the ordering holds.

The model: ``configs/default.py``'s ``get_config()`` (MLP 64-256-256-10 by default, ``--model cnn``
for the CNN) trained exactly as the main job's dense phase — AdamW (lr 1e-3, weight decay
1e-4), batch 128, the job's seeded data stream — for ``config.pruning.begin_step`` = 1500
steps, i.e. the model the default job starts pruning from (``--steps`` overrides).

Statistics of the data-aware criteria come from a calibration pass over the TRAINING split
only (the test split is used for nothing but the final accuracies), through
``impjax.estimators`` and each criterion's own ``statistic``/``importance``
(``impjax.scores.criterion``). Choices, fixed a priori and not tuned on any result:

* ``taylor`` (Molchanov et al. 2017/2019): ``|w * g_B|`` of the mean-loss gradient of a
  mini-batch ``B``, averaged over mini-batches (``estimators.running_mean``). Mini-batches
  are the training batch size of the config (128, also what ``transforms.prune`` sees
  during training), one shuffled epoch of the training split (11 full batches, 1408
  examples; the 29-example remainder is dropped so every batch has the same noise level).
* ``saliency``: ``|g_B|`` averaged over the same mini-batches.
* ``fisher``: the empirical Fisher diagonal ``F = (1/N) sum_i g_i^2`` over all N = 1437
  training examples, from per-example gradients (``scores.fisher_per_sample``, summed with
  ``estimators.sum`` over chunks and divided by N, so it is the exact per-example mean).
* ``obd`` (LeCun et al. 1990): ``0.5 * w^2 * F`` with that same empirical Fisher standing in
  for the Hessian diagonal (``scores.obd`` via the criterion's ``importance``).
* ``magnitude``: ``|w|``; ``random``: seeded uniform scores (seed = the model's seed).

Every seed retrains the model from a different init and data order (``config.seed``); the
tables show the mean over seeds (and the standard deviation across seeds). The test split
has 360 examples, so one accuracy point is 3.6 examples.

Run (from the repository root, with impjax installed):

  python benchmarks/quality/one_shot_quality.py              # MLP, 5 seeds (~1-2 min on 2 CPUs)
  python benchmarks/quality/one_shot_quality.py --model cnn  # CNN, 5 seeds (~5 min)
  python benchmarks/quality/one_shot_quality.py --json /tmp/one_shot.json --plot /tmp/one_shot.png
  python benchmarks/quality/one_shot_quality.py --quick      # < 1 minute smoke run
"""
from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import pruning  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import scores  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import select  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import viz  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position

CRITERIA = ("magnitude", "random", "saliency", "taylor", "fisher", "obd")
ROUND_CRITERIA = ("taylor", "obd")  # also pruned in rounds, re-scored between cuts
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
ORDERING = "obd, taylor >= magnitude > random"


def parse_args(argv=None):
  parser = harness.parser(__doc__, "smoke run: 1 seed, 500 steps, sparsities 0.5 and 0.9")
  parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
  harness.add_training_flags(parser, seeds=5)
  parser.add_argument("--sparsities", type=float, nargs="+", default=None)
  parser.add_argument("--rounds", type=int, default=10,
                      help="cuts of the re-scored variants (pruning.prune_in_rounds)")
  parser.add_argument("--plot", default=None, help="save accuracy-vs-sparsity PNG here")
  return parser.parse_args(argv)


def minibatch_estimate(crit, graphdef, params, train_data, batch_size, seed):
  """Mean over one epoch of mini-batches of ``crit.statistic(params, grad of batch loss)``."""
  grad_fn = jax.grad(harness.loss_of(graphdef))
  batches = list(data_lib.batches(train_data, batch_size, seed=seed, drop_remainder=True))
  return estimators.calibrate(estimators.running_mean(crit.statistic), params, batches,
                              grad_fn, progress=False)


def importance_of(name, graphdef, params, train_data, batch_size, seed):
  """Importance pytree of criterion ``name`` at ``params``, from training-split statistics."""
  crit = scores.criterion(name, seed=seed)
  if crit.statistic is None:
    estimate = None
  elif name in ("fisher", "obd"):
    estimate = harness.empirical_fisher(graphdef, params, train_data)
  else:
    estimate = minibatch_estimate(crit, graphdef, params, train_data, batch_size, seed)
  return crit.importance(params, estimate)


def run_seed(config, train_data, test_data, num_classes, steps, sparsities, rounds):
  """Dense accuracy and ``{(criterion, sparsity): accuracy}`` for one training seed."""
  graphdef, params = harness.train_dense(config, train_data, num_classes, steps)
  accuracy = training.make_accuracy_fn(graphdef)
  the_plan = groups.plan(params)  # default rules: kernels elementwise, biases dense
  selector = select.selector("global")

  @jax.jit
  def prune(importance, sparsity):
    masks = select.masks(importance, the_plan, sparsity, selector)
    return transforms.apply_masks(params, masks), masks

  dense = accuracy(params, test_data)
  results = {}
  for name in CRITERIA:
    importance = importance_of(name, graphdef, params, train_data, config.batch_size,
                               config.seed)
    for s in sparsities:
      pruned, masks = prune(importance, jnp.float32(s))
      achieved = transforms.sparsity_report(masks, params)["global"]
      assert abs(achieved - s) < 1e-3, (name, s, achieved)
      results[(name, s)] = accuracy(pruned, test_data)
  for name in ROUND_CRITERIA:
    score = lambda p, name=name: importance_of(name, graphdef, p, train_data,
                                               config.batch_size, config.seed)
    for s in sparsities:
      masks = pruning.prune_in_rounds(params, the_plan, s, score, rounds)
      results[(f"{name} x{rounds}", s)] = accuracy(transforms.apply_masks(params, masks),
                                                  test_data)
  return dense, results


def run_seeds(config, data, steps, seeds, sparsities, rounds):
  """``(dense accuracy per seed, results per seed)``; each seed retrains the model."""
  dense_per_seed, per_seed = [], []
  for seed in seeds:
    config.seed = seed
    t0 = time.time()
    dense, results = run_seed(config, *data, steps, sparsities, rounds)
    dense_per_seed.append(dense)
    per_seed.append(results)
    print(f"seed {seed}: dense test accuracy {dense:.4f} ({time.time() - t0:.1f}s)", flush=True)
  return dense_per_seed, per_seed


def print_tables(mean, std, names, sparsities, n_seeds):
  print("\nTest accuracy after one-shot pruning, no fine-tuning (mean over seeds):")
  header = ["criterion"] + [f"{s:.0%}" for s in sparsities]
  print(harness.format_table(header, [[c] + [mean[(c, s)] for s in sparsities] for c in names]))
  if n_seeds > 1:
    print("\nStandard deviation across seeds:")
    print(harness.format_table(header, [[c] + [std[(c, s)] for s in sparsities]
                                        for c in names]))


def claim_at_90(mean, per_seed, rounds):
  """Whether ``obd, taylor >= magnitude > random`` holds at 90% on the mean and per seed, in
  one cut and pruned in ``rounds`` re-scored cuts (printed)."""
  acc = {c: mean[(c, 0.9)] for c in CRITERIA}
  holds = (min(acc["obd"], acc["taylor"]) >= acc["magnitude"] > acc["random"])
  per_seed_holds = [min(r[("obd", 0.9)], r[("taylor", 0.9)]) >= r[("magnitude", 0.9)]
                    > r[("random", 0.9)] for r in per_seed]
  claim = {"sparsity": 0.9, "ordering": ORDERING,
           "holds_on_mean": bool(holds), "holds_per_seed": per_seed_holds}
  print(f"\nAt 90%: obd {acc['obd']:.4f}, taylor {acc['taylor']:.4f}, "
        f"magnitude {acc['magnitude']:.4f}, random {acc['random']:.4f} -> "
        f"'{ORDERING}' {'HOLDS' if holds else 'DOES NOT HOLD'} on "
        f"the mean; per seed: {per_seed_holds}")
  rescored = {c: mean[(f"{c} x{rounds}", 0.9)] for c in ROUND_CRITERIA}
  claim["rescored_in_rounds"] = {
      "rounds": rounds, **rescored,
      "holds_on_mean": bool(min(rescored.values()) >= acc["magnitude"] > acc["random"])}
  print(f"Pruned in {rounds} re-scored rounds (no training): obd {rescored['obd']:.4f}, "
        f"taylor {rescored['taylor']:.4f} -> '{ORDERING}' "
        f"{'HOLDS' if claim['rescored_in_rounds']['holds_on_mean'] else 'DOES NOT HOLD'}")
  return claim


def main(argv=None):
  args = parse_args(argv)
  config = harness.digits_config(args.model, args.seed)
  steps = args.steps or (500 if args.quick else config.pruning.begin_step)
  seeds = harness.training_seeds(args)
  sparsities = tuple(args.sparsities or ((0.5, 0.9) if args.quick else SPARSITIES))

  started = time.time()
  train_data, test_data, num_classes = harness.load_digits(config)
  dense_per_seed, per_seed = run_seeds(config, (train_data, test_data, num_classes), steps,
                                       seeds, sparsities, args.rounds)
  mean = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
  std = {k: float(np.std([r[k] for r in per_seed])) for k in per_seed[0]}
  dense_accuracy = float(np.mean(dense_per_seed))

  print(f"\n{args.model.upper()}, {steps} dense steps, {len(seeds)} seed(s), "
        f"{len(train_data['label'])} train / {len(test_data['label'])} test examples; "
        f"dense test accuracy {dense_accuracy:.4f} (per seed: "
        + ", ".join(f"{d:.4f}" for d in dense_per_seed) + ")")
  names = list(CRITERIA) + [f"{c} x{args.rounds}" for c in ROUND_CRITERIA]
  print_tables(mean, std, names, sparsities, len(seeds))
  claim = claim_at_90(mean, per_seed, args.rounds) if 0.9 in sparsities else None
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.1f}s")

  results = [{"criterion": c, "sparsity": s, "accuracy": mean[(c, s)], "std": std[(c, s)],
              "per_seed": [r[(c, s)] for r in per_seed]}
             for c in names for s in sparsities]
  harness.write_json(args.json, {
      "dense_accuracy": dense_accuracy, "dense_accuracy_per_seed": dense_per_seed,
      "results": results, "claim_at_90": claim, "model": args.model, "steps": steps,
      "seeds": seeds, "sparsities": list(sparsities),
      "calibration": {"taylor_saliency": f"running mean over mini-batches of "
                                         f"{config.batch_size}, one epoch of train",
                      "fisher_obd": "empirical Fisher, per-example mean over all of train"},
      "seconds": elapsed})
  if args.plot:
    viz.accuracy_vs_sparsity(results, args.plot, dense_accuracy=dense_accuracy)


if __name__ == "__main__":
  main()
