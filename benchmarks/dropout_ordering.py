"""Dropout ordering and layer sampling on the digits: targeted, ordered and layer-sampled training.

What it measures, each against a baseline trained in the same run:

1. **Targeted dropout** (Gomez et al. 2019). The MLP of ``impjax.train.default_config()``
   (64-256-256-10, AdamW lr 1e-3, wd 1e-4, batch 128, the job's seeded data stream) is trained
   for 1500 steps plainly and with targeted weight dropout (``gamma = 0.9``, ``alpha = 0.5``:
   among the 90% smallest weights of each output column, each is dropped with probability 0.5).
   Both are then pruned one-shot, without fine-tuning, by global magnitude (every kernel,
   biases dense) to 80/90/95% sparsity; test accuracy is reported. ``gamma`` was chosen among
   {0.5, 0.75, 0.9} (alpha 0.5, and 0.9/0.75) on a validation split carved from the training
   split (its last 20%), never on the test split: gamma = 0.9 kept the most validation
   accuracy at 90-95% sparsity.
2. **Ordered dropout** (FjORD). One MLP of the same shape is trained with FjORD's uniform
   width sampling over the widths it is evaluated at, ``p ~ U{0.25, 0.5, 0.75, 1.0}`` per
   batch (FjORD trains on the set of widths it deploys), in the fixed index order, then
   sliced (``impjax.slicing.slice_width``) to 25/50/75/100% width; each is compared with an
   MLP of that width (64/128/192/256 hidden units per layer) trained alone, same steps, seed
   and data. Also reported: the same model trained with the sandwich rule (the smallest and
   the full width trained on every step next to the sampled one, three passes per step), and
   an ordered model whose order is re-ranked by unit magnitude every 100 steps
   (``importance_order``). The same comparison runs twice: on the digits (1500 steps), and on
   ``impjax.data.synthetic.gaussian_clusters`` (20,000 training and 10,000 test examples of
   40 features, 10 classes of 4 Gaussian clusters each; 6000 steps, the MLP 40-256-256-10).
   On the digits 64 hidden units already reach the accuracy of 256, so whether accuracy
   rises with width there is decided by one or two of its 360 test examples; on the clusters
   a model trained alone gains about 10 points from 25% to 100% width, and the test split
   resolves tenths of a point. The JSON's ``ordered`` holds the clusters rows and
   ``ordered_digits`` the digits rows. 6000 steps (38 epochs) let the models trained alone
   converge there: at the digits' 1500 steps they are still 1.5 points short at full width.
3. **Layer sampling**. A ``ResidualMLP`` (width 128, 8 blocks of hidden 256) is pretrained on
   digits 0-4, then fine-tuned on digits 5-9 (test accuracy on the test split's 5-9) by:
   full fine-tuning; LISA (2 of 8 blocks every 20 steps, optimizer state for the active
   blocks only); IST (25% of the blocks, resampled every step by ``sigmoid(-s)``, scores from
   3 damping trials every 10 steps, optimizer state for every block); and, for reference,
   training embeddings and head only. Adam lr 1e-3, batch 64, all from the same pretrained
   weights and data stream. Measured in the same run: backward FLOPs by XLA's cost analysis
   (``flops(value_and_grad) - flops(forward)``, with the blocks unrolled and the active set
   fixed, i.e. exactly the branches the sampled step runs), gradient and optimizer-state
   bytes, XLA's buffer sizes of the jitted steps (``memory_analysis``) and the median step
   time. ``chex.assert_max_traces(n=1)`` proves the sampled steps never recompile.

Run (from the repository root, with impjax installed):

  python benchmarks/dropout_ordering.py                   # full run, ~4-5 min on 2 CPUs
  python benchmarks/dropout_ordering.py --json /tmp/dropout_ordering.json
  python benchmarks/dropout_ordering.py --quick           # < 1 minute smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import groups
from impjax import models
from impjax import scores
from impjax import select
from impjax import slicing
from impjax import train
from impjax import transforms
from impjax import tree_utils
from impjax.transforms import layer_stack

SPARSITIES = (0.8, 0.9, 0.95)
WIDTHS = (0.25, 0.5, 0.75, 1.0)
TARGETED = {"gamma": 0.9, "alpha": 0.5}
CLUSTERS_STEPS = 6000
RESIDUAL = {"width": 128, "hidden": 256, "depth": 8}
RESIDUAL_QUICK = {"width": 64, "hidden": 128, "depth": 4}


def train_loop(config, graphdef, params, train_data, steps, loss_fn=None, extra=None):
  """AdamW as the main job; ``loss_fn(params, key, batch)`` (default: plain cross-entropy).

  ``extra`` = ``(init, update)`` keeps a state updated after each step (an importance order);
  its current value is passed to ``loss_fn`` as ``loss_fn(params, key, batch, value)``.
  """
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  if loss_fn is None:
    loss_fn = lambda p, key, batch: train.cross_entropy(graphdef, p, batch)[0]

  @jax.jit
  def step(params, opt_state, extra_state, key, batch):
    args = () if extra is None else (extra_state.ranks,)
    grads = jax.grad(loss_fn)(params, key, batch, *args)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if extra is not None:
      extra_state = extra.update(extra_state, params)[1]
    return params, opt_state, extra_state

  opt_state = tx.init(params)
  extra_state = None if extra is None else extra.init(params)
  stream = data_lib.batches_from_step(train_data, config.batch_size, seed=config.seed)
  key = jax.random.key(config.seed)
  for i in range(steps):
    params, opt_state, extra_state = step(params, opt_state, extra_state,
                                          jax.random.fold_in(key, i), next(stream))
  return params, extra_state


def model_metrics(model, data):
  """``(accuracy, mean cross-entropy)`` of ``model`` on ``data``."""
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  loss = float(jax.jit(train.cross_entropy, static_argnums=0)(graphdef, params, data)[0])
  return train.make_accuracy_fn(graphdef)(params, data), loss


# ----------------------------------------------------------------------------- targeted dropout
def run_targeted(config, train_data, test_data, num_classes, steps, sparsities):
  rows = []
  for trained_with in ("plain", "targeted"):
    graphdef, params = common.init_model(config, train_data, num_classes)
    loss_fn = None
    if trained_with == "targeted":
      base = lambda p, batch: train.cross_entropy(graphdef, p, batch)[0]
      loss_fn = transforms.targeted_dropout(base, **TARGETED)
    params, _ = train_loop(config, graphdef, params, train_data, steps, loss_fn)
    accuracy = train.make_accuracy_fn(graphdef)
    the_plan = groups.plan(params)
    rows.append({"trained_with": trained_with, "sparsity": 0.0,
                 "accuracy": accuracy(params, test_data)})
    for s in sparsities:
      masks = select.masks(scores.magnitude(params), the_plan, s, scope="global")
      achieved = transforms.sparsity_report(masks, params)["global"]
      rows.append({"trained_with": trained_with, "sparsity": s, "achieved_sparsity": achieved,
                   "accuracy": accuracy(transforms.apply_masks(params, masks), test_data)})
  return rows


# ------------------------------------------------------------------------------ ordered dropout
SANDWICH = "sandwich rule, index order"


def run_ordered(config, train_data, test_data, num_classes, steps, widths, reorder_every):
  graphdef, params = common.init_model(config, train_data, num_classes)
  base = lambda p, batch: train.cross_entropy(graphdef, p, batch)[0]
  sample_width = functools.partial(transforms.fjord_width, widths=tuple(widths))
  ordered = transforms.ordered_dropout(base, sample_width)
  sandwich = transforms.ordered_dropout(base, sample_width, sandwich=(min(widths), max(widths)))
  index_order = transforms.importance_order("magnitude", every=0)
  variants = {"index order": (index_order, ordered), SANDWICH: (index_order, sandwich)}
  if reorder_every:
    variants[f"magnitude order, every {reorder_every}"] = (
        transforms.importance_order("magnitude", every=reorder_every), ordered)
  metrics = {}
  for name, (order, loss) in variants.items():
    trained, order_state = train_loop(
        config, graphdef, params, train_data, steps,
        lambda p, key, batch, ranks, loss=loss: loss(p, key, ranks, batch), extra=order)
    model = nnx.merge(graphdef, trained)
    metrics[name] = [model_metrics(slicing.slice_width(model, w, order_state.ranks)[0],
                                   test_data) for w in widths]
  rows = []
  hidden = tuple(config.mlp_hidden)
  for i, w in enumerate(widths):
    alone_config = config.copy_and_resolve_references()
    alone_config.mlp_hidden = tuple(select.num_kept(w, h) for h in hidden)
    alone_graphdef, alone = common.init_model(alone_config, train_data, num_classes)
    alone, _ = train_loop(alone_config, alone_graphdef, alone, train_data, steps)
    alone_accuracy, alone_loss = model_metrics(nnx.merge(alone_graphdef, alone), test_data)
    row = {"width": w, "hidden": list(alone_config.mlp_hidden),
           "ordered_accuracy": metrics["index order"][i][0],
           "alone_accuracy": alone_accuracy,
           "ordered_loss": metrics["index order"][i][1], "alone_loss": alone_loss}
    for name in list(variants)[1:]:
      row[f"ordered_accuracy ({name})"] = metrics[name][i][0]
      row[f"ordered_loss ({name})"] = metrics[name][i][1]
    rows.append(row)
  return rows


def report_ordered(rows):
  """Prints the ordered-vs-alone tables; returns each variant's claims (FjORD, sandwich)."""
  extra = [k for k in rows[0] if k.startswith("ordered_accuracy (")]
  print(common.format_table(
      ["width", "hidden", "ordered", "alone", "ordered - alone"] + [k[18:-1] for k in extra],
      [[f"{r['width']:.0%}", "x".join(map(str, r["hidden"])), r["ordered_accuracy"],
        r["alone_accuracy"], r["ordered_accuracy"] - r["alone_accuracy"]]
       + [r[k] for k in extra] for r in rows]))
  losses = ["ordered_loss"] + [k for k in rows[0] if k.startswith("ordered_loss (")]
  print("Test cross-entropy of the same models (the loss shows what accuracy cannot resolve):")
  print(common.format_table(
      ["width", "ordered", "alone"] + [k[14:-1] for k in losses[1:]],
      [[f"{r['width']:.0%}", r["ordered_loss"], r["alone_loss"]] + [r[k] for k in losses[1:]]
       for r in rows]))
  claims = {}
  for name, suffix in (("FjORD", ""), ("sandwich", f" ({SANDWICH})")):
    acc = [r["ordered_accuracy" + suffix] for r in rows]
    loss = [r["ordered_loss" + suffix] for r in rows]
    claims[name] = {
        "accuracy_monotone": all(a <= b for a, b in zip(acc, acc[1:])),
        "within_2_points": all(abs(a - r["alone_accuracy"]) <= 0.02 for a, r in zip(acc, rows)),
        "loss_monotone": all(a >= b for a, b in zip(loss, loss[1:]))}
    print(f"{name}: accuracy monotone in width: {claims[name]['accuracy_monotone']}; every "
          f"width within 2 points of alone: {claims[name]['within_2_points']}; test loss "
          f"monotone in width: {claims[name]['loss_monotone']}")
  return claims


# ------------------------------------------------------------------------------- layer sampling
def subset(data, labels):
  keep = np.isin(data["label"], labels)
  return {k: v[keep] for k, v in data.items()}


def tree_bytes(tree) -> int:
  return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def xla_flops(fn, *args) -> float:
  return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def backward_flops(loss_fn, block, params, batch, idx, train_rest=True):
  """XLA's FLOPs of ``value_and_grad`` minus the forward's, blocks unrolled, ``idx`` (a tuple
  of ints, or ``None`` for every block) trained, and the rest too if ``train_rest``: the ops
  the sampled step runs."""
  stack = params["blocks"]
  depth = layer_stack.num_layers(stack)
  active_idx = tuple(range(depth)) if idx is None else idx

  def unrolled(rest, active):
    def run(h):
      for layer in range(depth):
        if layer in active_idx:
          p = jax.tree.map(lambda a, j=active_idx.index(layer): a[j], active)
        else:
          p = jax.tree.map(lambda a, l=layer: jax.lax.stop_gradient(a[l]), stack)
        h = block(p, h)
      return h
    return loss_fn(tree_utils.set_path(rest, "blocks", stack), batch, run=run)

  rest = tree_utils.set_path(params, "blocks", None)
  active = layer_stack.gather(stack, jnp.asarray(active_idx))
  forward = xla_flops(unrolled, rest, active)
  both = xla_flops(jax.value_and_grad(unrolled, argnums=(0, 1) if train_rest else 1), rest,
                   active)
  return both - forward, forward


def memory(step, *args) -> dict:
  """XLA's buffer sizes of the compiled step (no donation): arguments, temporaries, outputs."""
  stats = jax.jit(step).lower(*args).compile().memory_analysis()
  return {"total_bytes": int(stats.argument_size_in_bytes + stats.temp_size_in_bytes
                             + stats.output_size_in_bytes),
          "argument_bytes": int(stats.argument_size_in_bytes),
          "temp_bytes": int(stats.temp_size_in_bytes),
          "output_bytes": int(stats.output_size_in_bytes)}


def median_step_seconds(step, state, batches, repeats):
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    state = step(*state, batches[i % len(batches)])
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def gradient_seconds(loss_fn, block, params, batch, idx, repeats):
  """Median wall-clock of the gradient alone: ``value_and_grad`` of the full model (``idx``
  ``None``, the model's own forward) or w.r.t. the rest and the layers ``idx`` through
  :func:`impjax.transforms.layer_stack.run_sampled`, as the sampled step computes it."""
  stack = params["blocks"]
  if idx is None:
    fn, args = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch))), (params,)
  else:
    idx = jnp.asarray(idx)
    sampled = lambda rest, active: loss_fn(
        tree_utils.set_path(rest, "blocks", jax.lax.stop_gradient(stack)), batch,
        run=functools.partial(layer_stack.run_sampled, block, active, stack, idx))
    fn = jax.jit(jax.value_and_grad(sampled, argnums=(0, 1)))
    args = (tree_utils.set_path(params, "blocks", None), layer_stack.gather(stack, idx))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def run_layer_sampling(config, train_data, test_data, pretrain_steps, finetune_steps,
                       timing_repeats, residual, quick=False):
  old, new = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
  pretrain_data, finetune_data = subset(train_data, old), subset(train_data, new)
  test_new = subset(test_data, new)
  in_features = int(np.prod(train_data["image"].shape[1:]))
  model = models.ResidualMLP(in_features, residual["width"], residual["hidden"],
                             residual["depth"], 10, rngs=nnx.Rngs(config.seed))
  graphdef, state = nnx.split(model)
  params, _ = train_loop(config, graphdef, nnx.to_pure_dict(state), pretrain_data,
                         pretrain_steps)
  block = models.block_fn(model)
  accuracy = train.make_accuracy_fn(graphdef)
  depth = residual["depth"]

  def loss_fn(p, batch, run=None):
    logits = nnx.merge(graphdef, p)(batch["image"], run=run)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  tx = optax.adam(config.learning_rate)
  batch_size = 64
  batches = list(data_lib.batches(finetune_data, batch_size, seed=config.seed))
  stream = lambda: data_lib.batches_from_step(finetune_data, batch_size, seed=config.seed)

  def finetune_plain(frozen_blocks):
    the_tx = tx
    if frozen_blocks:
      labels = {k: ("frozen" if k == "blocks" else "train") for k in params}
      the_tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    step = train.make_train_step(graphdef, the_tx)
    p, opt_state = params, the_tx.init(params)
    source = stream()
    for _ in range(finetune_steps):
      p, opt_state, _ = step(p, opt_state, next(source))
    timed = lambda p, o, b: step(p, o, b)[:2]
    return p, opt_state, step, the_tx, timed

  results = {}
  full_params, full_opt, full_step, _, full_timed = finetune_plain(False)
  results["full"] = {"accuracy": accuracy(full_params, test_new),
                     "optimizer_state_bytes": tree_bytes(full_opt),
                     "gradient_bytes": tree_bytes(params),
                     "xla": memory(full_step, params, full_opt, batches[0]),
                     "step_seconds": median_step_seconds(full_timed, (params, full_opt),
                                                         batches, timing_repeats)}
  bwd_full, forward = backward_flops(loss_fn, block, params, batches[0], None)
  results["full"]["backward_flops"] = bwd_full
  results["full"]["gradient_seconds"] = gradient_seconds(loss_fn, block, params, batches[0], None,
                                                         timing_repeats)
  head_params = finetune_plain(True)[0]
  results["embed+head only"] = {"accuracy": accuracy(head_params, test_new)}

  samplers = {"lisa": (transforms.lisa(depth, gamma=2, period=20), "active")}
  if not quick:
    samplers["ist"] = (transforms.ist(depth, fraction=0.25), "all")
  for name, (sampler, optimizer_state) in samplers.items():
    ls = transforms.layer_sampling(loss_fn, block, tx, sampler,
                                   optimizer_state=optimizer_state)
    state = ls.init(params, jax.random.key(config.seed))
    chex.clear_trace_counter()  # the counter is keyed by call site, shared by both samplers
    step = jax.jit(chex.assert_max_traces(ls.step, n=1))
    source, active_sets = stream(), set()
    for _ in range(finetune_steps):
      state, _ = step(state, next(source))
      active_sets.add(tuple(np.asarray(state.sampler_state.idx).tolist()))
    gamma = int(state.sampler_state.idx.shape[0])
    idx = tuple(range(gamma))  # FLOPs depend on how many blocks train, not which
    init = ls.init(params, jax.random.key(config.seed))
    results[name] = {
        "accuracy": accuracy(state.params, test_new),
        "active_blocks": gamma, "distinct_active_sets": len(active_sets), "traces": 1,
        "optimizer_state_bytes": tree_bytes((init.opt_state, init.layer_opt_state)),
        "gradient_bytes": tree_bytes(tree_utils.set_path(params, "blocks", None))
                          + tree_bytes(layer_stack.gather(params["blocks"], init.sampler_state.idx)),
        "backward_flops": backward_flops(loss_fn, block, params, batches[0], idx)[0],
        "gradient_seconds": gradient_seconds(loss_fn, block, params, batches[0], idx,
                                             timing_repeats),
        "xla": memory(ls.step, init, batches[0]),
        "step_seconds": median_step_seconds(lambda s, b: (step(s, b)[0],), (init,), batches,
                                            timing_repeats)}
    if name == "ist":
      results[name]["final_scores"] = np.asarray(state.sampler_state.scores).round(3).tolist()
  if not quick:
    # Control: every block trained through the same sampled step (all active): separates the
    # cost of the machinery (unrolled conds) from what sampling saves.
    control = transforms.layer_sampling(loss_fn, block, tx,
                                        transforms.lisa(depth, gamma=depth, period=10**9))
    c_init = control.init(params, jax.random.key(config.seed))
    c_step = jax.jit(control.step)
    results["all blocks, sampled-step code"] = {
        "xla": memory(control.step, c_init, batches[0]),
        "step_seconds": median_step_seconds(lambda s, b: (c_step(s, b)[0],), (c_init,),
                                            batches, timing_repeats)}
  for name in [k for k in results if k not in ("full", "embed+head only")]:
    r = results[name]
    r["step_time_ratio"] = r["step_seconds"] / results["full"]["step_seconds"]
    r["xla_total_ratio"] = r["xla"]["total_bytes"] / results["full"]["xla"]["total_bytes"]
  for name in samplers:
    r = results[name]
    r["backward_flops_ratio"] = r["backward_flops"] / bwd_full
    r["gradient_time_ratio"] = r["gradient_seconds"] / results["full"]["gradient_seconds"]
    r["optimizer_state_ratio"] = r["optimizer_state_bytes"] / results["full"]["optimizer_state_bytes"]
    r["gradient_ratio"] = r["gradient_bytes"] / results["full"]["gradient_bytes"]
    r["xla_temp_ratio"] = r["xla"]["temp_bytes"] / results["full"]["xla"]["temp_bytes"]
    r["accuracy_minus_full"] = r["accuracy"] - results["full"]["accuracy"]
  return {"pretrained_accuracy_on_new_classes": accuracy(params, test_new),
          "forward_flops": forward, "model": dict(residual, in_features=in_features),
          "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
          "finetune_batch_size": batch_size, "methods": results}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps (default 1500; ordered dropout on the clusters: "
                           f"{CLUSTERS_STEPS})")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="write the figures as JSON here")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: 200 steps, widths 25/100%%, short fine-tuning")
  args = parser.parse_args(argv)

  config = train.default_config()
  config.seed = args.seed
  steps = args.steps or (200 if args.quick else 1500)
  widths = (0.25, 1.0) if args.quick else WIDTHS
  started = time.time()
  train_data, test_data, num_classes = common.load_digits(config)

  t0 = time.time()
  targeted = run_targeted(config, train_data, test_data, num_classes, steps, SPARSITIES)
  print(f"\nTargeted dropout (gamma {TARGETED['gamma']}, alpha {TARGETED['alpha']}) vs plain, "
        f"MLP {config.mlp_hidden}, {steps} steps, one-shot global magnitude pruning, no "
        f"fine-tuning; test accuracy ({time.time() - t0:.0f}s):")
  acc = {(r["trained_with"], r["sparsity"]): r["accuracy"] for r in targeted}
  print(common.format_table(
      ["sparsity", "plain", "targeted", "targeted - plain"],
      [[f"{s:.0%}", acc[("plain", s)], acc[("targeted", s)],
        acc[("targeted", s)] - acc[("plain", s)]] for s in (0.0,) + SPARSITIES]))

  ordered = {}
  clusters_train, clusters_test = synthetic.gaussian_clusters(
      *((2000, 1000) if args.quick else (20000, 10000)))
  for dataset, data, ordered_steps in (
      ("digits", (train_data, test_data), steps),
      ("gaussian_clusters", (clusters_train, clusters_test),
       args.steps or (300 if args.quick else CLUSTERS_STEPS))):
    t0 = time.time()
    rows = run_ordered(config, *data, int(data[0]["label"].max()) + 1, ordered_steps, widths,
                       0 if args.quick else 100)
    print(f"\nOrdered dropout on {dataset} (FjORD widths, index order) sliced to each width vs "
          f"the same MLP width trained alone, {ordered_steps} steps; test accuracy "
          f"({time.time() - t0:.0f}s):")
    ordered[dataset] = {"rows": rows, "steps": ordered_steps, "claims": report_ordered(rows)}

  t0 = time.time()
  sampling = run_layer_sampling(config, train_data, test_data,
                                150 if args.quick else 800, 40 if args.quick else 300,
                                3 if args.quick else 30,
                                RESIDUAL_QUICK if args.quick else RESIDUAL, args.quick)
  m = sampling["methods"]
  print(f"\nLayer sampling: ResidualMLP {sampling['model']} pretrained on digits 0-4 "
        f"({sampling['pretrain_steps']} steps; {sampling['pretrained_accuracy_on_new_classes']:.4f}"
        f" on 5-9), fine-tuned {sampling['finetune_steps']} steps on 5-9 "
        f"({time.time() - t0:.0f}s). Ratios are to full fine-tuning, same run:")
  rows = [["full fine-tuning", m["full"]["accuracy"], 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
  depth = sampling["model"]["depth"]
  for name, label in (("lisa", f"LISA 2/{depth} every 20"), ("ist", "IST 25%")):
    if name not in m:
      continue
    r = m[name]
    rows.append([label, r["accuracy"], r["accuracy_minus_full"], r["backward_flops_ratio"],
                 r["gradient_time_ratio"], r["gradient_ratio"], r["optimizer_state_ratio"],
                 r["xla_total_ratio"], r["step_time_ratio"]])
  rows.append(["embed+head only", m["embed+head only"]["accuracy"],
               m["embed+head only"]["accuracy"] - m["full"]["accuracy"], "", "", "", "", "", ""])
  if "all blocks, sampled-step code" in m:
    c = m["all blocks, sampled-step code"]
    rows.append([f"{depth}/{depth} via sampled step", "", "", "", "", "", "",
                 c["xla_total_ratio"], c["step_time_ratio"]])
  print(common.format_table(["method", "accuracy", "- full", "bwd FLOPs", "grad time",
                             "grad bytes", "opt-state bytes", "XLA buffers", "step time"], rows))
  print("XLA buffers: arguments + temporaries + outputs of the compiled step (no donation); "
        "grad time: median wall-clock of value_and_grad alone; step time: of the whole jitted "
        "step (median, on this shared CPU)."
        + (" The last row runs every block through the sampled-step code (unrolled conds) as a "
           "control." if "all blocks, sampled-step code" in m else ""))
  print(f"full fine-tuning: backward {m['full']['backward_flops'] / 1e6:.1f} MFLOP/step "
        f"(forward {sampling['forward_flops'] / 1e6:.1f}), optimizer state "
        f"{m['full']['optimizer_state_bytes'] / 1e6:.2f} MB, gradients "
        f"{m['full']['gradient_bytes'] / 1e6:.2f} MB; sampled steps traced once over "
        + ", ".join(f"{m[k]['distinct_active_sets']} ({k})" for k in ("lisa", "ist") if k in m)
        + " active sets.")
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.1f}s")
  if args.json:
    common.write_json(args.json, {
        "targeted": targeted, "targeted_hyperparameters": TARGETED,
        "ordered": ordered["gaussian_clusters"]["rows"],
        "ordered_steps": ordered["gaussian_clusters"]["steps"],
        "ordered_claims": ordered["gaussian_clusters"]["claims"],
        "ordered_digits": ordered["digits"]["rows"],
        "ordered_digits_claims": ordered["digits"]["claims"],
        "layer_sampling": sampling, "steps": steps, "seed": args.seed, "model": "mlp",
        "mlp_hidden": list(config.mlp_hidden), "seconds": elapsed})


if __name__ == "__main__":
  main()
