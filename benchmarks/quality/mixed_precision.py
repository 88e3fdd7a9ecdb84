"""Mixed precision driven by importance on digits: bit allocation, PTQ, QAT and real storage.

What it measures. A digits MLP (``configs/default.py``'s ``get_config()``: 64-256-256-10) is trained
densely exactly as the main job's dense phase (1500 AdamW steps, ``harness.train_dense``).
Its kernels are then quantized without retraining — symmetric round-to-nearest, one scale per
output channel, HAWQ's convention ``absmax / (2^(b-1) - 1)`` — biases stay float32. The units
that receive bit-widths are the output channels of every kernel (256 + 256 + 10 = 522 units;
a channel's bits apply to all its incoming weights). At an average of 3, 4 and 5 bits per
kernel weight, the test accuracy of:

* ``uniform``: every channel at B bits;
* ``importance`` (importance-allocated bits): the exact knapsack (``select.allocate``) over the
  choices {2, 3, 4, 5, 6, 8} per channel minimizing the summed HAWQ sensitivity
  ``Omega(b) = Tr(H_u)/n * ||Q_b(W_u) - W_u||^2`` under the bit budget (``greedy`` is the
  greedy allocator on the same table, for comparison);
* the three Layer-Wise Quantization lowering orders: all channels at B+1 bits, then channels
  drop to B-1 until the average is B — ``lowering_importance`` least important first
  (importance = sensitivity removed per weight-bit by the higher precision,
  ``(Omega(B-1) - Omega(B+1)) / (n * 2)``), ``random`` in random orders (mean over 5 orders) and
  ``reversed`` most important first.

Besides accuracy, the KL divergence of the quantized model's test predictions from the float
model's measures fidelity: accuracy saturates at 3+ bits on digits (uniform 4-5 bits already
match the float model's accuracy on most seeds, so no allocation can beat them there), so
accuracy claims are ">=" and the strict claims are on KL. The lowering orders are handicapped
by construction against uniform: at an average of B bits half the weights go to B-1 bits, whose
squared error is ~4x that of B (at B = 3 that is ternary, 2-bit, channels), and only half gain
B+1; the order has to concentrate the sensitivity very unevenly to win, while the knapsack
chooses among all of {2, ..., 8}.

The curvature ``H`` in ``Omega`` is the empirical Fisher diagonal over the whole TRAINING split
(per-example gradients, as ``one_shot_quality.py`` computes it for OBD), the positive
semi-definite stand-in for the Hessian. The full run also reports the knapsack with HAWQ's own
curvature, Hutchinson's Hessian diagonal (16 Rademacher probes per batch over one epoch of
training batches): on this converged model many channels have near-zero curvature and the
per-channel Hutchinson estimates are noisy (a prior run on an 80/20 split of the training data,
not the test split, showed the knapsack then losing to uniform at 4 and 5 bits), which is why
the Fisher was chosen. The test split is used only for the reported figures. Also reported:
post-training calibration (per-channel clip
ratios minimizing the layer-output error on training inputs, ``quantization.clip_ratios``),
PTQ1.61-style salient input channels kept at 8 bits, quantization-aware training at 4 bits
(``transforms.quantized`` around the job's loss in ``impjax.flax.training.make_train_step``,
500 fine-tuning steps from the float model), and real storage: the QAT model and the knapsack
allocation exported as int4-packed / int8 arrays plus scales, their bytes against float32, and
whether ``quantization.load`` reproduces the fake-quant outputs bit for bit.

All choices above were fixed before any run. Every seed retrains the model from a different
init and data order; tables show means over seeds. The test split has 360 examples, so one
accuracy point is 3.6 examples.

Run (from the repository root, with impjax installed):

  python benchmarks/quality/mixed_precision.py               # 3 seeds (~2-3 min on 2 CPUs)
  python benchmarks/quality/mixed_precision.py --json /tmp/mixed_precision.json
  python benchmarks/quality/mixed_precision.py --quick       # < 1 minute smoke run
"""
from __future__ import annotations

import os
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import quantization  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import scores  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import select  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position

CHOICES = harness.CHOICES  # (2, 3, 4, 5, 6, 8)
AVG_BITS = harness.AVG_BITS  # (3, 4, 5)
SCHEME = harness.SCHEME  # symmetric, per output channel, "hawq"
RULES = ((r"(^|/)kernel$", groups.neurons(-1)),)  # units: output channels; biases stay float
NUM_RANDOM_ORDERS = 5
PROBES = 16
QAT_STEPS = 500
SALIENT_FRACTION = 0.05
ORDERS = ("lowering_importance", "random", "reversed")
COMPARISONS = (("knapsack", "uniform"), ("lowering_importance", "random"),
               ("lowering_importance", "reversed"), ("knapsack", "random"),
               ("knapsack", "reversed"))


def parse_args(argv=None):
  parser = harness.parser(__doc__,
                          "smoke run: 1 seed, 500 steps, no Hutchinson row, 100 QAT steps")
  harness.add_training_flags(parser, seeds=3)
  return parser.parse_args(argv)


def hessian_diagonal(graphdef, params, train_data, batch_size, seed):
  """Hutchinson diagonal averaged over one shuffled epoch of training batches."""
  loss = harness.loss_of(graphdef)
  key = jax.random.key(seed)
  batches = [(b, jax.random.fold_in(key, i)) for i, b in
             enumerate(data_lib.batches(train_data, batch_size, seed=seed))]
  probe = lambda p, item: scores.hutchinson(loss, p, item[1], item[0], num_probes=PROBES)
  return estimators.calibrate(estimators.running_mean(lambda p, g: g), params, batches, probe,
                              progress=False)


def layer_grams(graphdef, params, images):
  """``E[x x^T]`` of every kernel's input over ``images`` (the MLP's forward, layer by layer)."""
  model = nnx.merge(graphdef, params)
  x, inputs = images.reshape(images.shape[0], -1), {}
  for i, layer in enumerate(model.hidden):
    inputs[f"hidden/{i}/kernel"] = x
    x = jax.nn.relu(layer(x))
  inputs["head/kernel"] = x
  return tree_utils.map_with_path(
      lambda path, _: (scores.means(scores.token_gram(inputs[path]))["gram"]
                       if path in inputs else None), params)


class Quantized:
  """One seed's float model on the test split: fake-quantizes params and measures them."""

  def __init__(self, graphdef, params, test_data):
    self.graphdef, self.params, self.test_data = graphdef, params, test_data
    self.accuracy = training.make_accuracy_fn(graphdef)
    self.the_plan = groups.plan(params, RULES)
    self.sizes = select.unit_sizes(params, self.the_plan)
    images = test_data["image"]
    float_logits = nnx.merge(graphdef, params)(images)

    @jax.jit
    def kl_to_float(qparams):
      log_p = jax.nn.log_softmax(float_logits)
      log_q = jax.nn.log_softmax(nnx.merge(graphdef, qparams)(images))
      return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))

    self.kl_to_float = kl_to_float
    self.quantize = jax.jit(lambda p, b, c, s: transforms.fake_quant(p, b, SCHEME, c, s))
    self.logits = jax.jit(lambda p: nnx.merge(graphdef, p)(images))

  def measure(self, bits, p=None, clip=None, salient=None):
    """Test accuracy, KL to the float model and average bits of ``p`` (default: the float
    params) at ``bits``."""
    p = self.params if p is None else p
    qparams = self.quantize(p, bits, clip, salient)
    return {"accuracy": self.accuracy(qparams, self.test_data),
            "kl": float(self.kl_to_float(qparams)),
            "avg_bits": select.average_bits(bits, p, salient)}

  def uniform(self, avg):
    return harness.uniform_bits(self.sizes, avg, self.params, self.the_plan)

  def lowering(self, importance, avg):
    return harness.lowering_bits(importance, self.params, self.the_plan, avg)

  def allocate(self, table, avg, method="knapsack"):
    return select.allocate(table, self.params, self.the_plan, CHOICES, avg_bits=avg,
                           method=method)


def allocation_figures(q, table, seed, hessian=None):
  """Uniform, knapsack, greedy and the three lowering orders at every budget (and the knapsack
  on the Hutchinson table ``hessian`` when given)."""
  out = {}
  if hessian is not None:
    for avg in AVG_BITS:
      out[("knapsack_hutchinson", avg)] = q.measure(q.allocate(hessian, avg))
  for avg in AVG_BITS:
    gain = select.gain_per_bit(table, q.params, q.the_plan, CHOICES, avg - 1, avg + 1)
    out[("uniform", avg)] = q.measure(q.uniform(avg))
    out[("lowering_importance", avg)] = q.measure(q.lowering(gain, avg))
    out[("reversed", avg)] = q.measure(q.lowering(jax.tree.map(jnp.negative, gain), avg))
    randoms = [q.measure(q.lowering(scores.random(jax.random.key(1000 * seed + r), q.sizes),
                                    avg)) for r in range(NUM_RANDOM_ORDERS)]
    out[("random", avg)] = {k: float(np.mean([m[k] for m in randoms])) for k in randoms[0]}
    for method in ("knapsack", "greedy"):
      out[(method, avg)] = q.measure(q.allocate(table, avg, method))
  return out


def post_training_figures(q, train_images):
  """Post-training calibration (clip search on training inputs) and salient input channels."""
  grams = layer_grams(q.graphdef, q.params, train_images)
  element = tree_utils.map_with_path(  # |W_jk|^2 E[x_j^2]: a weight's share of the output
      lambda path, w, g: jnp.zeros_like(w) if g is None else jnp.square(w) * jnp.diag(g)[:, None],
      q.params, grams)
  salient = select.salient_channels(element, q.the_plan, SALIENT_FRACTION)
  calibrate = jax.jit(lambda p, b, g: quantization.clip_ratios(p, b, g, SCHEME))
  out = {}
  for avg in (2, 3):
    bits = q.uniform(avg)
    out[("absmax", avg)] = q.measure(bits)
    out[("calibrated", avg)] = q.measure(bits, clip=calibrate(q.params, bits, grams))
    out[("salient", avg)] = q.measure(bits, salient=salient)
  return out


def qat_params(q, config, train_data, bits, steps):
  """The float model fine-tuned ``steps`` steps with the loss quantized at ``bits``."""
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  step = training.make_train_step(q.graphdef, tx, loss_fn=transforms.quantized(
      training.cross_entropy, bits, SCHEME, argnum=1))
  params, opt_state = q.params, tx.init(q.params)
  stream = data_lib.batches_from_step(train_data, config.batch_size, seed=config.seed + 7)
  for _ in range(steps):
    params, opt_state, _ = step(params, opt_state, next(stream))
  return params


def export_figures(q, models):
  """Real storage of ``{name: (params, bits)}``: bytes, accuracy and equality to fake quant."""
  out = {}
  for name, (p, bits) in models.items():
    stored = quantization.export(p, bits, SCHEME)
    loaded = quantization.load(stored)
    same = np.array_equal(q.logits(loaded), q.logits(q.quantize(p, bits, None, None)))
    out[("export", name)] = {"bytes": quantization.nbytes(stored),
                             "float32_bytes": quantization.nbytes(p),
                             "avg_bits": select.average_bits(bits, p),
                             "accuracy": q.accuracy(loaded, q.test_data),
                             "outputs_equal_fake_quant": bool(same)}
  return out


def run_seed(config, train_data, test_data, num_classes, steps, quick):
  """Every figure of one training seed: ``{key: {"accuracy", "kl", "avg_bits", ...}}``."""
  graphdef, params = harness.train_dense(config, train_data, num_classes, steps)
  q = Quantized(graphdef, params, test_data)
  out = {"float": {"accuracy": q.accuracy(params, test_data), "kl": 0.0, "avg_bits": 32.0}}
  hawq_table = jax.jit(lambda p, h: quantization.hawq_table(p, h, CHOICES, q.the_plan, SCHEME))
  table = hawq_table(params, harness.empirical_fisher(graphdef, params, train_data))
  hessian = None if quick else hawq_table(params, hessian_diagonal(
      graphdef, params, train_data, config.batch_size, config.seed))
  out.update(allocation_figures(q, table, config.seed, hessian))
  out.update(post_training_figures(q, train_data["image"]))
  # QAT at 4 bits: fine-tune the float model with the quantized loss.
  bits4 = q.uniform(4)
  out["ptq4"] = q.measure(bits4)
  qat = qat_params(q, config, train_data, bits4, QAT_STEPS // (5 if quick else 1))
  out["qat4"] = q.measure(bits4, qat)
  # Real storage: the QAT int4 model and the knapsack allocation at the first budget.
  out.update(export_figures(q, {"qat_int4": (qat, bits4),
                                "knapsack": (params, q.allocate(table, AVG_BITS[0]))}))
  return out


class Runs:
  """Figures of every seed: means and per-seed lists of ``runs[i][key][field]``."""

  def __init__(self, runs):
    self.runs = runs

  def mean(self, key, field="accuracy"):
    return float(np.mean([r[key][field] for r in self.runs]))

  def per_seed(self, key, field="accuracy"):
    return [r[key][field] for r in self.runs]

  def entry(self, key):
    return {"accuracy": self.mean(key), "kl": self.mean(key, "kl"),
            "achieved_avg_bits": self.mean(key, "avg_bits"), "per_seed": self.per_seed(key)}


def print_allocation_tables(runs, methods):
  for field, title in (("accuracy", "Test accuracy"),
                       ("kl", "KL(float || quantized) of the test predictions, lower is better"),
                       ("avg_bits", "Achieved average bits per kernel weight")):
    print(f"\n{title} (knapsack = importance-allocated bits; lowering orders use B-1 / B+1 "
          "bits; mean over seeds):")
    header = ["avg bits"] + list(methods)
    rows = [[str(a)] + [runs.mean((m, a), field) for m in methods] for a in AVG_BITS]
    if field != "avg_bits":
      header += ["knapsack/uniform"]
      for row, a in zip(rows, AVG_BITS):
        row += [runs.mean(("knapsack", a), field) / max(runs.mean(("uniform", a), field), 1e-12)]
    print(harness.format_table(header, rows))


def claims_of(runs, methods):
  """Accuracy ``>``/``>=`` and KL ``<`` of every comparison at every budget (printed).

  Accuracy saturates on digits (uniform 5 bits already matches the float model on 360 test
  examples, so nothing can beat it there): accuracy claims are ">" and ">=", and fidelity to
  the float model (KL, lower is better) carries the strict comparison at every budget.
  """
  claims = {}
  for a in AVG_BITS:
    acc = {m: runs.mean((m, a)) for m in methods}
    kl = {m: runs.mean((m, a), "kl") for m in methods}
    claims[str(a)] = {
        **{f"{m}_accuracy_gt_{o}": acc[m] > acc[o] for m, o in COMPARISONS},
        **{f"{m}_accuracy_ge_{o}": acc[m] >= acc[o] for m, o in COMPARISONS},
        **{f"{m}_kl_lt_{o}": kl[m] < kl[o] for m, o in COMPARISONS},
        "uniform_equals_float_accuracy": acc["uniform"] == runs.mean("float")}
    verdict = lambda key: "yes" if claims[str(a)][key] else "no"
    print(f"  {a} bits: " + "; ".join(
        f"{m} vs {o}: accuracy > {verdict(f'{m}_accuracy_gt_{o}')}, "
        f">= {verdict(f'{m}_accuracy_ge_{o}')}, KL < {verdict(f'{m}_kl_lt_{o}')}"
        for m, o in COMPARISONS))
  return claims


def print_post_training_and_qat(runs):
  print("\nPost-training at uniform bits: absmax scales, calibrated clip, 5% salient input "
        "channels at 8 bits (accuracy / KL):")
  print(harness.format_table(
      ["bits", "absmax", "calibrated", "salient", "absmax KL", "calibrated KL", "salient KL",
       "salient avg bits"],
      [[str(a), runs.mean(("absmax", a)), runs.mean(("calibrated", a)),
        runs.mean(("salient", a)), runs.mean(("absmax", a), "kl"),
        runs.mean(("calibrated", a), "kl"), runs.mean(("salient", a), "kl"),
        runs.mean(("salient", a), "avg_bits")] for a in (2, 3)]))
  float_acc, ptq4, qat4 = runs.mean("float"), runs.mean("ptq4"), runs.mean("qat4")
  print(f"\nQAT at 4 bits: float {float_acc:.4f}, PTQ 4-bit {ptq4:.4f}, QAT 4-bit {qat4:.4f} "
        f"(QAT - float = {100 * (qat4 - float_acc):+.2f} points; within 1 point: "
        f"{'HOLDS' if qat4 >= float_acc - 0.01 else 'DOES NOT HOLD'})")


def print_exports(exports, seed):
  print(f"\nReal storage (seed {seed}):")
  print(harness.format_table(
      ["model", "bytes", "float32 bytes", "ratio", "avg bits", "accuracy", "== fake quant"],
      [[n, e["bytes"], e["float32_bytes"], e["bytes"] / e["float32_bytes"], e["avg_bits"],
        e["accuracy"], e["outputs_equal_fake_quant"]] for n, e in exports.items()]))


def figures(runs, allocators, claims, exports, steps, seeds, quick):
  """The JSON figures."""
  return {
      "float_accuracy": runs.mean("float"),
      "qat_4bit_accuracy": runs.mean("qat4"),
      "ptq_4bit_accuracy": runs.mean("ptq4"),
      # "importance" is the importance-allocated bits (the knapsack); "random" and
      # "reversed" are the lowering in random and most-important-first order, next to the
      # importance-ordered lowering in "lowering".
      "allocation": [{"avg_bits": a, "scheme": s, **runs.entry((key, a))} for a in AVG_BITS
                     for s, key in (("importance", "knapsack"), ("uniform", "uniform"),
                                    ("random", "random"), ("reversed", "reversed"))],
      "lowering": [{"avg_bits": a, "order": o, **runs.entry((key, a))} for a in AVG_BITS
                   for o, key in (("importance", "lowering_importance"), ("random", "random"),
                                  ("reversed", "reversed"))],
      "allocators": [{"avg_bits": a, "method": m, **runs.entry((m, a))}
                     for a in AVG_BITS for m in allocators],
      "claims": claims,
      "post_training": [{"bits": a, "method": m, **runs.entry((m, a))}
                        for a in (2, 3) for m in ("absmax", "calibrated", "salient")],
      "export": exports,
      "float_accuracy_per_seed": runs.per_seed("float"),
      "qat_4bit_accuracy_per_seed": runs.per_seed("qat4"),
      "setup": {"model": "mlp", "steps": steps, "seeds": seeds,
                "choices": list(CHOICES), "units": "output channels of every kernel",
                "scheme": "symmetric per-channel RTN, hawq convention",
                "curvature": "empirical Fisher diagonal over the training split",
                "hutchinson_probes_per_batch": PROBES,
                "qat_steps": QAT_STEPS // (5 if quick else 1),
                "random_orders": NUM_RANDOM_ORDERS, "salient_fraction": SALIENT_FRACTION}}


def main(argv=None):
  args = parse_args(argv)
  config = harness.digits_config("mlp", args.seed)
  steps = args.steps or (500 if args.quick else config.pruning.begin_step)
  seeds = harness.training_seeds(args)
  started = time.time()
  train_data, test_data, num_classes = harness.load_digits(config)
  per_seed = []
  for seed in seeds:
    config.seed = seed
    t0 = time.time()
    per_seed.append(run_seed(config, train_data, test_data, num_classes, steps, args.quick))
    print(f"seed {seed}: float test accuracy {per_seed[-1]['float']['accuracy']:.4f} "
          f"({time.time() - t0:.1f}s)", flush=True)
  runs = Runs(per_seed)
  print(f"\nMLP 64-256-256-10, {steps} dense steps, {len(seeds)} seed(s); float test accuracy "
        f"{runs.mean('float'):.4f}. Kernels quantized per output channel (symmetric, RTN), "
        "biases float.")
  allocators = ("knapsack", "greedy") + (("knapsack_hutchinson",)
                                         if ("knapsack_hutchinson", AVG_BITS[0]) in per_seed[0]
                                         else ())
  methods = ("uniform",) + allocators + ORDERS
  print_allocation_tables(runs, methods)
  claims = claims_of(runs, methods)
  print_post_training_and_qat(runs)
  exports = {name: per_seed[0][("export", name)] for name in ("qat_int4", "knapsack")}
  print_exports(exports, seeds[0])
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.1f}s")
  harness.write_json(args.json, dict(figures(runs, allocators, claims, exports, steps, seeds,
                                             args.quick), seconds=elapsed))


if __name__ == "__main__":
  main()
