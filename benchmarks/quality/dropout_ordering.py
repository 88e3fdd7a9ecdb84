"""Dropout ordering and layer sampling on the digits: targeted, ordered and layer-sampled training.

What it measures, each against a baseline trained in the same run:

1. **Targeted dropout** (Gomez et al. 2019). The MLP of ``configs/default.py``'s
   ``get_config()`` (64-256-256-10, AdamW lr 1e-3, wd 1e-4, batch 128, the job's seeded data
   stream) is trained for 1500 steps plainly and with targeted weight dropout (``gamma = 0.9``,
   ``alpha = 0.5``: among the 90% smallest weights of each output column, each is dropped with
   probability 0.5). Both are then pruned one-shot, without fine-tuning, by global magnitude
   (every kernel, biases dense) to 80/90/95% sparsity; test accuracy is reported. ``gamma`` was
   chosen among {0.5, 0.75, 0.9} (alpha 0.5, and 0.9/0.75) on a validation split carved from
   the training split (its last 20%), never on the test split: gamma = 0.9 kept the most
   validation accuracy at 90-95% sparsity.
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

  python benchmarks/quality/dropout_ordering.py           # full run, ~4-5 min on 2 CPUs
  python benchmarks/quality/dropout_ordering.py --json /tmp/dropout_ordering.json
  python benchmarks/quality/dropout_ordering.py --quick   # < 1 minute smoke run
"""
from __future__ import annotations

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import scores  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import select  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import slicing  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.transforms import layer_stack  # pylint: disable=g-import-not-at-top,wrong-import-position

SPARSITIES = (0.8, 0.9, 0.95)
WIDTHS = (0.25, 0.5, 0.75, 1.0)
TARGETED = {"gamma": 0.9, "alpha": 0.5}
CLUSTERS_STEPS = 6000
RESIDUAL = {"width": 128, "hidden": 256, "depth": 8}
RESIDUAL_QUICK = {"width": 64, "hidden": 128, "depth": 4}
FINETUNE_BATCH = 64
CONTROL = "all blocks, sampled-step code"


def parse_args(argv=None):
  parser = harness.parser(__doc__, "smoke run: 200 steps, widths 25/100%%, short fine-tuning")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps (default 1500; ordered dropout on the clusters: "
                           f"{CLUSTERS_STEPS})")
  return parser.parse_args(argv)


def train_loop(config, graphdef, params, train_data, steps, loss_fn=None, extra=None):
  """AdamW as the main job; ``loss_fn(params, key, batch)`` (default: plain cross-entropy).

  ``extra`` = ``(init, update)`` keeps a state updated after each step (an importance order);
  its current value is passed to ``loss_fn`` as ``loss_fn(params, key, batch, value)``.
  """
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  if loss_fn is None:
    base = harness.loss_of(graphdef)
    loss_fn = lambda p, key, batch: base(p, batch)

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
  loss = float(jax.jit(training.cross_entropy, static_argnums=0)(graphdef, params, data)[0])
  return training.make_accuracy_fn(graphdef)(params, data), loss


# ----------------------------------------------------------------------------- targeted dropout
def run_targeted(config, train_data, test_data, num_classes, steps, sparsities):
  rows = []
  selector = select.selector("global")
  for trained_with in ("plain", "targeted"):
    graphdef, params = harness.init_model(config, train_data, num_classes)
    loss_fn = None
    if trained_with == "targeted":
      loss_fn = transforms.targeted_dropout(harness.loss_of(graphdef), **TARGETED)
    params, _ = train_loop(config, graphdef, params, train_data, steps, loss_fn)
    accuracy = training.make_accuracy_fn(graphdef)
    the_plan = groups.plan(params)
    rows.append({"trained_with": trained_with, "sparsity": 0.0,
                 "accuracy": accuracy(params, test_data)})
    for s in sparsities:
      masks = select.masks(scores.magnitude(params), the_plan, s, selector)
      achieved = transforms.sparsity_report(masks, params)["global"]
      rows.append({"trained_with": trained_with, "sparsity": s, "achieved_sparsity": achieved,
                   "accuracy": accuracy(transforms.apply_masks(params, masks), test_data)})
  return rows


def print_targeted(rows, hidden, steps, seconds):
  print(f"\nTargeted dropout (gamma {TARGETED['gamma']}, alpha {TARGETED['alpha']}) vs plain, "
        f"MLP {hidden}, {steps} steps, one-shot global magnitude pruning, no "
        f"fine-tuning; test accuracy ({seconds:.0f}s):")
  acc = {(r["trained_with"], r["sparsity"]): r["accuracy"] for r in rows}
  print(harness.format_table(
      ["sparsity", "plain", "targeted", "targeted - plain"],
      [[f"{s:.0%}", acc[("plain", s)], acc[("targeted", s)],
        acc[("targeted", s)] - acc[("plain", s)]] for s in (0.0,) + SPARSITIES]))


# ------------------------------------------------------------------------------ ordered dropout
SANDWICH = "sandwich rule, index order"


def ordered_variants(graphdef, widths, reorder_every):
  """``{name: (importance order, ordered-dropout loss)}`` of the ordered models trained."""
  base = harness.loss_of(graphdef)
  sample_width = functools.partial(transforms.fjord_width, widths=tuple(widths))
  ordered = transforms.ordered_dropout(base, sample_width)
  sandwich = transforms.ordered_dropout(base, sample_width, sandwich=(min(widths), max(widths)))
  index_order = transforms.importance_order("magnitude", every=0)
  variants = {"index order": (index_order, ordered), SANDWICH: (index_order, sandwich)}
  if reorder_every:
    variants[f"magnitude order, every {reorder_every}"] = (
        transforms.importance_order("magnitude", every=reorder_every), ordered)
  return variants


def run_ordered(config, train_data, test_data, num_classes, steps, widths, reorder_every):
  graphdef, params = harness.init_model(config, train_data, num_classes)
  mlp_config = {"in_features": int(np.prod(train_data["image"][0].shape)),
                "hidden": tuple(config.model.mlp_hidden), "num_classes": num_classes}
  variants = ordered_variants(graphdef, widths, reorder_every)
  metrics = {}
  for name, (order, loss) in variants.items():
    trained, order_state = train_loop(
        config, graphdef, params, train_data, steps,
        lambda p, key, batch, ranks, loss=loss: loss(p, key, ranks, batch), extra=order)
    model = nnx.merge(graphdef, trained)
    metrics[name] = [model_metrics(slicing.slice_width(
        model, w, test_data["image"][:1], config=mlp_config, ranks=order_state.ranks)[0],
                                   test_data) for w in widths]
  rows = []
  hidden = tuple(config.model.mlp_hidden)
  for i, w in enumerate(widths):
    alone_config = config.copy_and_resolve_references()
    alone_config.model.mlp_hidden = tuple(select.num_kept(w, h) for h in hidden)
    alone_graphdef, alone = harness.init_model(alone_config, train_data, num_classes)
    alone, _ = train_loop(alone_config, alone_graphdef, alone, train_data, steps)
    alone_accuracy, alone_loss = model_metrics(nnx.merge(alone_graphdef, alone), test_data)
    row = {"width": w, "hidden": list(alone_config.model.mlp_hidden),
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
  print(harness.format_table(
      ["width", "hidden", "ordered", "alone", "ordered - alone"] + [k[18:-1] for k in extra],
      [[f"{r['width']:.0%}", "x".join(map(str, r["hidden"])), r["ordered_accuracy"],
        r["alone_accuracy"], r["ordered_accuracy"] - r["alone_accuracy"]]
       + [r[k] for k in extra] for r in rows]))
  losses = ["ordered_loss"] + [k for k in rows[0] if k.startswith("ordered_loss (")]
  print("Test cross-entropy of the same models (the loss shows what accuracy cannot resolve):")
  print(harness.format_table(
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


def run_ordered_tasks(config, digits, steps, quick, steps_override):
  """Ordered dropout on the digits and on the Gaussian clusters: ``{dataset: {"rows",
  "steps", "claims"}}``."""
  widths = (0.25, 1.0) if quick else WIDTHS
  clusters = synthetic.gaussian_clusters(*((2000, 1000) if quick else (20000, 10000)))
  ordered = {}
  for dataset, data, ordered_steps in (
      ("digits", digits, steps),
      ("gaussian_clusters", clusters, steps_override or (300 if quick else CLUSTERS_STEPS))):
    t0 = time.time()
    rows = run_ordered(config, *data, int(data[0]["label"].max()) + 1, ordered_steps, widths,
                       0 if quick else 100)
    print(f"\nOrdered dropout on {dataset} (FjORD widths, index order) sliced to each width vs "
          f"the same MLP width trained alone, {ordered_steps} steps; test accuracy "
          f"({time.time() - t0:.0f}s):")
    ordered[dataset] = {"rows": rows, "steps": ordered_steps, "claims": report_ordered(rows)}
  return ordered


# ------------------------------------------------------------------------------- layer sampling
def subset(data, labels):
  keep = np.isin(data["label"], labels)
  return {k: v[keep] for k, v in data.items()}


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
  return harness.call_seconds(fn, args, repeats)


class Finetune:
  """A ``ResidualMLP`` pretrained on digits 0-4, to fine-tune on 5-9 (``test`` their test split)."""

  def __init__(self, config, train_data, test_data, pretrain_steps, residual):
    old, new = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
    self.data, self.test = subset(train_data, new), subset(test_data, new)
    self.in_features = int(np.prod(train_data["image"].shape[1:]))
    model = models.ResidualMLP(self.in_features, residual["width"], residual["hidden"],
                               residual["depth"], 10, rngs=nnx.Rngs(config.seed))
    self.graphdef, state = nnx.split(model)
    self.params, _ = train_loop(config, self.graphdef, nnx.to_pure_dict(state),
                                subset(train_data, old), pretrain_steps)
    self.block = models.block_fn(model)
    self.accuracy = training.make_accuracy_fn(self.graphdef)
    self.depth = residual["depth"]
    self.seed = config.seed
    self.tx = optax.adam(config.learning_rate)
    self.batches = list(data_lib.batches(self.data, FINETUNE_BATCH, seed=config.seed))

  def loss_fn(self, p, batch, run=None):
    logits = nnx.merge(self.graphdef, p)(batch["image"], run=run)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  def stream(self):
    return data_lib.batches_from_step(self.data, FINETUNE_BATCH, seed=self.seed)

  def plain(self, frozen_blocks, steps):
    """Fine-tuned params and opt state, and the jitted step (blocks frozen if asked)."""
    tx = self.tx
    if frozen_blocks:
      labels = {k: ("frozen" if k == "blocks" else "train") for k in self.params}
      tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    step = training.make_train_step(self.graphdef, tx)
    p, opt_state = self.params, tx.init(self.params)
    source = self.stream()
    for _ in range(steps):
      p, opt_state, _ = step(p, opt_state, next(source))
    return p, opt_state, step


def full_figures(ft, steps, repeats):
  """Full fine-tuning: accuracy, bytes, XLA buffers, step time, backward FLOPs and gradient
  time; and the forward FLOPs."""
  params, batch = ft.params, ft.batches[0]
  full_params, full_opt, full_step = ft.plain(False, steps)
  out = {"accuracy": ft.accuracy(full_params, ft.test),
         "optimizer_state_bytes": harness.tree_bytes(full_opt),
         "gradient_bytes": harness.tree_bytes(params),
         "xla": harness.xla_memory(harness.compiled(full_step, params, full_opt, batch)),
         "step_seconds": harness.step_seconds(lambda p, o, b: full_step(p, o, b)[:2],
                                              (params, full_opt), ft.batches, repeats)}
  out["backward_flops"], forward = harness.backward_flops(ft.loss_fn, ft.block, params, batch,
                                                          None)
  out["gradient_seconds"] = gradient_seconds(ft.loss_fn, ft.block, params, batch, None,
                                             repeats)
  return out, forward


def sampled_figures(ft, sampler, optimizer_state, steps, repeats):
  """A sampler's fine-tuning (traced once): accuracy, active sets, bytes, FLOPs, times."""
  params, batch = ft.params, ft.batches[0]
  ls = transforms.layer_sampling(ft.loss_fn, ft.block, ft.tx, sampler,
                                 optimizer_state=optimizer_state)
  state = ls.init(params, jax.random.key(ft.seed))
  chex.clear_trace_counter()  # the counter is keyed by call site, shared by both samplers
  step = jax.jit(chex.assert_max_traces(ls.step, n=1))
  source, active_sets = ft.stream(), set()
  for _ in range(steps):
    state, _ = step(state, next(source))
    active_sets.add(tuple(np.asarray(state.sampler_state.idx).tolist()))
  gamma = int(state.sampler_state.idx.shape[0])
  idx = tuple(range(gamma))  # FLOPs depend on how many blocks train, not which
  init = ls.init(params, jax.random.key(ft.seed))
  out = {
      "accuracy": ft.accuracy(state.params, ft.test),
      "active_blocks": gamma, "distinct_active_sets": len(active_sets), "traces": 1,
      "optimizer_state_bytes": harness.tree_bytes((init.opt_state, init.layer_opt_state)),
      "gradient_bytes": harness.tree_bytes(tree_utils.set_path(params, "blocks", None))
                        + harness.tree_bytes(layer_stack.gather(params["blocks"],
                                                                init.sampler_state.idx)),
      "backward_flops": harness.backward_flops(ft.loss_fn, ft.block, params, batch, idx)[0],
      "gradient_seconds": gradient_seconds(ft.loss_fn, ft.block, params, batch, idx, repeats),
      "xla": harness.xla_memory(harness.compiled(ls.step, init, batch)),
      "step_seconds": harness.step_seconds(lambda s, b: (step(s, b)[0],), (init,), ft.batches,
                                           repeats)}
  return out, state


def control_figures(ft, repeats):
  """Every block trained through the same sampled step (all active): separates the cost of the
  machinery (unrolled conds) from what sampling saves."""
  control = transforms.layer_sampling(ft.loss_fn, ft.block, ft.tx,
                                      transforms.lisa(ft.depth, gamma=ft.depth, period=10**9))
  c_init = control.init(ft.params, jax.random.key(ft.seed))
  c_step = jax.jit(control.step)
  return {"xla": harness.xla_memory(harness.compiled(control.step, c_init, ft.batches[0])),
          "step_seconds": harness.step_seconds(lambda s, b: (c_step(s, b)[0],), (c_init,),
                                               ft.batches, repeats)}


def add_ratios(results, samplers):
  full = results["full"]
  for name in [k for k in results if k not in ("full", "embed+head only")]:
    r = results[name]
    r["step_time_ratio"] = r["step_seconds"] / full["step_seconds"]
    r["xla_total_ratio"] = r["xla"]["total_bytes"] / full["xla"]["total_bytes"]
  for name in samplers:
    r = results[name]
    r["backward_flops_ratio"] = r["backward_flops"] / full["backward_flops"]
    r["gradient_time_ratio"] = r["gradient_seconds"] / full["gradient_seconds"]
    r["optimizer_state_ratio"] = r["optimizer_state_bytes"] / full["optimizer_state_bytes"]
    r["gradient_ratio"] = r["gradient_bytes"] / full["gradient_bytes"]
    r["xla_temp_ratio"] = r["xla"]["temp_bytes"] / full["xla"]["temp_bytes"]
    r["accuracy_minus_full"] = r["accuracy"] - full["accuracy"]


def run_layer_sampling(config, train_data, test_data, pretrain_steps, finetune_steps,
                       timing_repeats, residual, quick=False):
  ft = Finetune(config, train_data, test_data, pretrain_steps, residual)
  results = {}
  results["full"], forward = full_figures(ft, finetune_steps, timing_repeats)
  results["embed+head only"] = {"accuracy": ft.accuracy(ft.plain(True, finetune_steps)[0],
                                                        ft.test)}
  samplers = {"lisa": (transforms.lisa(ft.depth, gamma=2, period=20), "active")}
  if not quick:
    samplers["ist"] = (transforms.ist(ft.depth, fraction=0.25), "all")
  for name, (sampler, optimizer_state) in samplers.items():
    results[name], state = sampled_figures(ft, sampler, optimizer_state, finetune_steps,
                                           timing_repeats)
    if name == "ist":
      results[name]["final_scores"] = np.asarray(state.sampler_state.scores).round(3).tolist()
  if not quick:
    results[CONTROL] = control_figures(ft, timing_repeats)
  add_ratios(results, samplers)
  return {"pretrained_accuracy_on_new_classes": ft.accuracy(ft.params, ft.test),
          "forward_flops": forward, "model": dict(residual, in_features=ft.in_features),
          "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
          "finetune_batch_size": FINETUNE_BATCH, "methods": results}


def print_layer_sampling(sampling, seconds):
  m = sampling["methods"]
  print(f"\nLayer sampling: ResidualMLP {sampling['model']} pretrained on digits 0-4 "
        f"({sampling['pretrain_steps']} steps; {sampling['pretrained_accuracy_on_new_classes']:.4f}"
        f" on 5-9), fine-tuned {sampling['finetune_steps']} steps on 5-9 "
        f"({seconds:.0f}s). Ratios are to full fine-tuning, same run:")
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
  if CONTROL in m:
    rows.append([f"{depth}/{depth} via sampled step", "", "", "", "", "", "",
                 m[CONTROL]["xla_total_ratio"], m[CONTROL]["step_time_ratio"]])
  print(harness.format_table(["method", "accuracy", "- full", "bwd FLOPs", "grad time",
                              "grad bytes", "opt-state bytes", "XLA buffers", "step time"],
                             rows))
  print("XLA buffers: arguments + temporaries + outputs of the compiled step (no donation); "
        "grad time: median wall-clock of value_and_grad alone; step time: of the whole jitted "
        "step (median, on this shared CPU)."
        + (" The last row runs every block through the sampled-step code (unrolled conds) as a "
           "control." if CONTROL in m else ""))
  print(f"full fine-tuning: backward {m['full']['backward_flops'] / 1e6:.1f} MFLOP/step "
        f"(forward {sampling['forward_flops'] / 1e6:.1f}), optimizer state "
        f"{m['full']['optimizer_state_bytes'] / 1e6:.2f} MB, gradients "
        f"{m['full']['gradient_bytes'] / 1e6:.2f} MB; sampled steps traced once over "
        + ", ".join(f"{m[k]['distinct_active_sets']} ({k})" for k in ("lisa", "ist") if k in m)
        + " active sets.")


def main(argv=None):
  args = parse_args(argv)
  config = harness.digits_config("mlp", args.seed)
  steps = args.steps or (200 if args.quick else 1500)
  started = time.time()
  train_data, test_data, num_classes = harness.load_digits(config)

  t0 = time.time()
  targeted = run_targeted(config, train_data, test_data, num_classes, steps, SPARSITIES)
  print_targeted(targeted, config.model.mlp_hidden, steps, time.time() - t0)
  ordered = run_ordered_tasks(config, (train_data, test_data), steps, args.quick, args.steps)
  t0 = time.time()
  sampling = run_layer_sampling(config, train_data, test_data,
                                150 if args.quick else 800, 40 if args.quick else 300,
                                3 if args.quick else 30,
                                RESIDUAL_QUICK if args.quick else RESIDUAL, args.quick)
  print_layer_sampling(sampling, time.time() - t0)
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.1f}s")
  harness.write_json(args.json, {
      "targeted": targeted, "targeted_hyperparameters": TARGETED,
      "ordered": ordered["gaussian_clusters"]["rows"],
      "ordered_steps": ordered["gaussian_clusters"]["steps"],
      "ordered_claims": ordered["gaussian_clusters"]["claims"],
      "ordered_digits": ordered["digits"]["rows"],
      "ordered_digits_claims": ordered["digits"]["claims"],
      "layer_sampling": sampling, "steps": steps, "seed": args.seed, "model": "mlp",
      "mlp_hidden": list(config.model.mlp_hidden), "seconds": elapsed})


if __name__ == "__main__":
  main()
