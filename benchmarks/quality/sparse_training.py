"""Sparse training from scratch: RigL against SET, static sparsity and gradual magnitude pruning.

What it measures: an MLP 40-256-256-10 trained on ``impjax.data.synthetic.gaussian_clusters``
(20,000 training and 10,000 test examples; a task on which accuracy keeps rising with width,
unlike the 8x8 digits where every method ties) at 80% and 90% sparsity, by

* ``static``: random masks with ERK per-layer counts, fixed throughout;
* ``set``: the same start, rewired every 100 steps (drop the smallest weights, regrow at random);
* ``rigl``: the same start and schedule, regrown where the gradient is largest;
* ``gradual``: dense at first, pruned by global magnitude on Zhu & Gupta's polynomial schedule
  from 10% to 75% of training (the dense-to-sparse baseline RigL compares against);
* ``ste``: the same schedule, straight-through (``prune(..., straight_through=True)``, the loss
  reading the masked weights, the dense weights receiving the whole gradient, so pruned weights
  may return at every re-selection); accuracy is that of the masked weights;
* ``sr_ste``: ``ste`` with SR-STE's decay on the pruned weights (``sr_ste_decay=2e-4``);
* ``dense``: no pruning.

Every sparse-from-scratch method uses ERK densities, a drop fraction of 0.3 decayed by a cosine
to 0 at 75% of training, and Adam (lr 1e-3, batch 128) for the same number of steps as the
dense and gradual runs. The claim checked (Evci et al. 2020): at 80-90% sparsity RigL beats
static and SET, and comes within reach of gradual pruning. Seeds change the init, the masks
and the data order; the table shows the mean and the spread over seeds.

Run:
  python benchmarks/quality/sparse_training.py --json /tmp/sparse_training.json   # 3 seeds
  python benchmarks/quality/sparse_training.py --quick                            # 1 seed, short
"""

from __future__ import annotations

import os
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import schedules  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position

SPARSITIES = (0.8, 0.9)
METHODS = ("static", "set", "rigl", "gradual", "ste", "sr_ste")
SR_STE_DECAY = 2e-4
UPDATE_EVERY = 100


def optimizer(method: str, sparsity: float, steps: int, seed: int):
  adam = optax.adam(1e-3)
  if method == "dense":
    return adam
  if method in ("gradual", "ste", "sr_ste"):
    schedule = schedules.polynomial(0.0, sparsity, int(0.1 * steps), int(0.75 * steps),
                                    UPDATE_EVERY)
    return transforms.prune(adam, schedule, "magnitude", straight_through=method != "gradual",
                            sr_ste_decay=SR_STE_DECAY if method == "sr_ste" else 0.0)
  return transforms.sparse_training(adam, sparsity, method=method, distribution="erk",
                                    update_every=UPDATE_EVERY, end_step=int(0.75 * steps),
                                    seed=seed)


def train(method, sparsity, steps, seed, train_data, test_data):
  """Test accuracy and final sparsity of one run."""
  graphdef, state = nnx.split(models.MLP(40, (256, 256), 10, rngs=nnx.Rngs(seed)))
  params = nnx.to_pure_dict(state)
  tx = optimizer(method, sparsity, steps, seed)
  opt_state = tx.init(params)
  straight_through = method in ("ste", "sr_ste")
  step = training.make_train_step(graphdef, tx, straight_through=straight_through)
  stream = data_lib.batches_from_step(train_data, 128, seed=seed)
  for _ in range(steps):
    params, opt_state, _ = step(params, opt_state, next(stream))
  if straight_through:  # the dense weights trained; the model is the masked ones
    params = transforms.apply_masks(params, transforms.current_masks(opt_state, params))
  kernels = [x for path, x in zip(harness.tree_utils.path_names(params), jax.tree.leaves(params))
             if path.endswith("kernel")]
  zeros = sum(int(jnp.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
  return training.make_accuracy_fn(graphdef)(params, test_data), zeros


def main():
  parser = harness.parser(__doc__, "1 seed, 2000/1000 examples, 600 steps")
  harness.add_training_flags(parser, seeds=3)
  args = parser.parse_args()
  steps = args.steps or (600 if args.quick else 4000)
  train_data, test_data = synthetic.gaussian_clusters(*((2000, 1000) if args.quick
                                                        else (20000, 10000)))
  seeds = harness.training_seeds(args)
  runs = [("dense", 0.0)] + [(m, s) for s in SPARSITIES for m in METHODS]
  results = []
  for seed in seeds:
    for method, sparsity in runs:
      accuracy, zeros = train(method, sparsity, steps, seed, train_data, test_data)
      results.append({"method": method, "sparsity": sparsity, "seed": seed,
                      "accuracy": float(accuracy), "kernel_zeros": zeros})
      print(f"seed {seed} {method:>7} {sparsity:.0%}: accuracy {accuracy:.4f} "
            f"(kernel zeros {zeros:.3f})", flush=True)
  rows = []
  for method, sparsity in runs:
    accs = [r["accuracy"] for r in results if (r["method"], r["sparsity"]) == (method, sparsity)]
    rows.append([method, f"{sparsity:.0%}", f"{np.mean(accs):.4f}",
                 f"{np.min(accs):.4f}-{np.max(accs):.4f}"])
  print(harness.format_table(["method", "sparsity", f"accuracy (mean of {len(seeds)})",
                              "range"], rows))
  harness.write_json(args.json, {"steps": steps, "seeds": seeds, "results": results})


if __name__ == "__main__":
  main()
