"""One-shot pruning of a Gemma-style decoder trained on the project's English text: perplexity
of magnitude, Wanda, RIA, DSnoT, SparseGPT and OWL (its defaults, and its lambda and M chosen on
validation) at 50/60/70% and 2:4, and after recovery
fine-tuning with the masks held.

What it measures: the zoo's small Gemma-style decoder (``zoo.build("gemma", "small")``: RMSNorm,
RoPE, grouped-query attention with 8 query and 2 kv heads, gated MLP, Einsum kernels, tied
embedding; 2.4M parameters) trained from scratch on :mod:`impjax.data.language_modeling`'s
protocol (byte-level BPE of 512 tokens trained on the training text, sequences of 64 tokens;
AdamW, warm-up and cosine decay from 2e-3 over ``--steps``, batch 32; the params kept are those
of the lowest perplexity on the protocol's 128 validation sequences, evaluated every 100 steps,
training stopped after 3 evaluations without a new best: ``lm.train_to_best``; the evaluation
sequences are read only after training). Each method prunes
every kernel but the tied embedding layer after layer (``structure.prune_sequential``) from the protocol's 128
calibration sequences; ``owl`` is Wanda at ``structure.owl_sparsities`` with the paper's lambda
0.08 and M 5; ``owl_tuned`` at the lambda in (0.02, 0.04, 0.08, 0.16) and M in (3, 5, 7, 10)
of the lowest perplexity on the 128 validation sequences (as the paper tunes them per model),
chosen per sparsity; DSnoT is Wanda's masks refined by its swaps (unstructured only).
Perplexity on the protocol's 512 evaluation sequences. Recovery: Wanda and SparseGPT at 50%,
70% and 2:4 fine-tuned for ``--recovery-steps`` (AdamW 3e-4) with ``transforms.hold_masks``,
every pruned weight checked still zero, beside the dense model fine-tuned alike (its perplexity
is what recovery is measured against). The claims checked: SparseGPT and Wanda far below
magnitude; OWL and DSnoT below uniform Wanda at 70%; recovery lowers perplexity. Before all
that, SparseGPT's speed (``harness.sparsegpt_speed``): impjax's jitted SparseGPT against a
float64 numpy implementation of the published algorithm on ``n x n`` kernels up to 4096
(quick: 512), unstructured 50% and 2:4, seconds and reconstruction error side by side.

Run:
  python benchmarks/quality/decoder_pruning.py --json /tmp/decoder.json  # up to 1500 steps
  python benchmarks/quality/decoder_pruning.py --quick                   # 40 steps, 64 sequences
  python benchmarks/quality/decoder_pruning.py --speed-only              # SparseGPT's speed only
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

from impjax import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import language_modeling as lm  # pylint: disable=g-import-not-at-top,wrong-import-position

SPEED_SIZES = (1024, 2048, 4096)
QUICK_SPEED_SIZES = (256, 512)
SPARSITIES = (0.5, 0.6, 0.7, "2:4")
METHODS = ("magnitude", "wanda", "ria", "dsnot", "sparsegpt", "owl", "owl_tuned")
OWL_DEFAULT = {"lam": 0.08, "outlier": 5.0}
OWL_GRID = [{"lam": lam, "outlier": m} for m in (3.0, 5.0, 7.0, 10.0)
            for lam in (0.02, 0.04, 0.08, 0.16)]
RECOVERED = {("wanda", 0.5), ("wanda", 0.7), ("wanda", "2:4"), ("sparsegpt", 0.5),
             ("sparsegpt", 0.7), ("sparsegpt", "2:4")}


def pruned_nonzero(params, masks) -> int:
  return int(sum(np.count_nonzero(np.asarray(p)[~np.broadcast_to(np.asarray(m), np.shape(p))])
                 for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks))))


def main():
  parser = harness.parser(__doc__, "40 training steps, 64 evaluation sequences, 2 sparsities")
  parser.add_argument("--steps", type=int, default=None,
                      help="most training steps, the schedule's length (default 1500)")
  parser.add_argument("--recovery-steps", type=int, default=None,
                      help="fine-tuning steps with masks held (default 100, quick 5)")
  parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                      help="the one-shot methods to run (default all)")
  parser.add_argument("--speed-only", action="store_true",
                      help="only SparseGPT's speed against the float64 reference")
  args = parser.parse_args()
  speed = harness.sparsegpt_speed(QUICK_SPEED_SIZES if args.quick else SPEED_SIZES,
                                  seed=args.seed)
  print(harness.format_table(
      ["kernel", "mode", "impjax s", "reference s", "impjax error", "reference error"],
      [[r["kernel"], r["mode"], r["impjax_seconds"], r["reference_seconds"], r["impjax_error"],
        r["reference_error"]] for r in speed]), flush=True)
  if args.speed_only:
    harness.write_json(args.json, {"sparsegpt_speed": speed})
    return
  steps = args.steps or (40 if args.quick else 1500)
  recovery_steps = args.recovery_steps or (5 if args.quick else 100)
  started = time.time()
  member, params, data, curve, protocol = harness.trained_decoder(steps, args.quick, args.seed)
  chosen = min(curve, key=lambda c: c[1])
  print("validation perplexity by step:", [(n, round(p, 2)) for n, p in curve])
  ppl = lambda p: lm.perplexity(member.apply, p, data.evaluation)
  dense = ppl(params)
  print(f"dense perplexity {dense:.2f} at step {chosen[0]} (validation {chosen[1]:.2f}; "
        f"{time.time() - started:.0f}s)", flush=True)
  finetune = lambda p, tx: lm.train(member.apply, p, data.train, tx, recovery_steps,
                                    seed=args.seed, progress=False)[0]
  recovery_tx = lambda: optax.adamw(3e-4, weight_decay=0.01)
  dense_finetuned = ppl(finetune(params, recovery_tx()))
  print(f"dense fine-tuned like the recovery: perplexity {dense_finetuned:.2f}", flush=True)
  s = structure.discover(member.apply, params, *member.inputs)
  calibration = [(data.calibration[i:i + 32],) for i in range(0, len(data.calibration), 32)]
  moments = structure.batch_moments(member.apply, params, calibration)
  owl_wanda = lambda sparsity, hyper: structure.prune_sequential(
      member.apply, params, s, calibration, "wanda", progress=False,
      sparsity=structure.owl_sparsities(params, moments, s, sparsity, **hyper))
  validation = lambda p: lm.perplexity(member.apply, p, data.validation)
  results = []
  for sparsity in SPARSITIES[::2] if args.quick else SPARSITIES:
    kwargs = harness.one_shot_kwargs(sparsity)
    for method in args.methods:
      if method == "dsnot" and isinstance(sparsity, str):
        continue  # DSnoT refines unstructured masks
      hyper = None
      if method.startswith("owl"):
        if isinstance(sparsity, str):
          continue
        if method == "owl":
          hyper, (pruned, masks) = OWL_DEFAULT, owl_wanda(sparsity, OWL_DEFAULT)
        else:  # the grid point of the lowest validation perplexity, pruned once
          hyper, (pruned, masks) = min(((h, owl_wanda(sparsity, h)) for h in OWL_GRID),
                                       key=lambda tried: validation(tried[1][0]))
      else:
        pruned, masks = structure.prune_sequential(member.apply, params, s, calibration, method,
                                                   progress=False, **kwargs)
      row = {"method": method, "sparsity": sparsity, "perplexity": ppl(pruned),
             "recovered_perplexity": None, "pruned_nonzero": None, "owl": hyper}
      if (method, sparsity) in RECOVERED:
        recovered = finetune(pruned, transforms.hold_masks(recovery_tx(), masks))
        row["recovered_perplexity"] = ppl(recovered)
        row["pruned_nonzero"] = pruned_nonzero(recovered, masks)
      results.append(row)
      print(f"{method:9s} {str(sparsity):4s} perplexity {row['perplexity']:9.2f}"
            + (f" (lambda {hyper['lam']}, M {hyper['outlier']:g})" if hyper else "")
            + (f" -> recovered {row['recovered_perplexity']:.2f}"
               if row["recovered_perplexity"] is not None else "")
            + f"  ({time.time() - started:.0f}s)", flush=True)
  print(harness.format_table(
      ["method", "sparsity", "perplexity", "recovered", "pruned nonzero", "owl lambda, M"],
      [[r["method"], r["sparsity"], f"{r['perplexity']:.2f}",
        "" if r["recovered_perplexity"] is None else f"{r['recovered_perplexity']:.2f}",
        "" if r["pruned_nonzero"] is None else r["pruned_nonzero"],
        "" if r["owl"] is None else f"{r['owl']['lam']}, {r['owl']['outlier']:g}"]
       for r in results]))
  harness.write_json(args.json, {
      "dense_perplexity": dense, "dense_finetuned_perplexity": dense_finetuned,
      "results": results, "sparsegpt_speed": speed, "steps": chosen[0], "most_steps": steps,
      "validation_curve": curve,
      "recovery_steps": recovery_steps, "protocol": protocol._asdict(),
      "parameters": harness.tree_size(params),
      "pruned_kernels": sorted(p for p in tree_utils.path_names(params)
                               if p in s.kernels and s.kernels[p].kind != "embedding")})


if __name__ == "__main__":
  main()
