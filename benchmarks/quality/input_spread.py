"""How unequal the input channels of every pruned kernel are, on the pretrained MiniLM and on
the decoder trained from scratch: what Wanda's norm term has to work with.

Wanda scores ``|W_ij| * ||x_j||``; where every input channel ``j`` has about the same norm, its
mask is per-output magnitude's. For each kernel ``structure.prune_sequential`` prunes (every
encoder Linear of all-MiniLM-L6-v2, every kernel of the zoo's small Gemma-style decoder but the
tied embedding), from the dense model's inputs on calibration data (MiniLM: 128 sentences of the
reference pages' calibration split, padding left out; the decoder: the language-modelling
protocol's 128 calibration sequences):

* ``max/median``: the largest channel RMS over the median channel's;
* ``cv``: the channels' RMS standard deviation over their mean;
* ``wanda vs magnitude``: the share of the kernel's entries on which Wanda's keep mask at 50%
  and per-output magnitude's (Wanda with all channel norms equal) disagree.

The decoder is trained as ``decoder_pruning.py`` trains it (``harness.trained_decoder``, same
``--steps`` and ``--seed``). Printed per kernel and as medians over kernels; the JSON's
``medians`` holds ``{model: {column: median}}``, its ``input_spread`` both models'
``{path: {max_over_median, cv, wanda_vs_magnitude}}``.

Run:
  python benchmarks/quality/input_spread.py --json /tmp/input_spread.json  # up to 1500 steps
  python benchmarks/quality/input_spread.py --quick                        # 40 steps
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position

COLUMNS = ("max_over_median", "cv", "wanda_vs_magnitude")


def minilm_spread(seed: int) -> dict:
  model, tok = minilm.load_pretrained(max_length=128)
  sentences = harness.source_sentences("reference", seed)[:128]
  f = harness.minilm_function(model, minilm.token_batches(tok, sorted(sentences, key=len), 32))
  moments = structure.batch_moments(f.apply, f.params, f.inputs, token_masks=f.token_masks)
  return harness.input_spread(f.params, moments, f.structure)


def decoder_spread(steps: int, quick: bool, seed: int) -> dict:
  member, params, data, curve, _ = harness.trained_decoder(steps, quick, seed)
  print("decoder validation perplexity by step:", [(n, round(p, 2)) for n, p in curve])
  s = structure.discover(member.apply, params, *member.inputs)
  calibration = [(data.calibration[i:i + 32],) for i in range(0, len(data.calibration), 32)]
  moments = structure.batch_moments(member.apply, params, calibration)
  return harness.input_spread(params, moments, s)


def main():
  parser = harness.parser(__doc__, "the decoder trained 40 steps")
  parser.add_argument("--steps", type=int, default=None,
                      help="most decoder training steps (default 1500, quick 40)")
  args = parser.parse_args()
  steps = args.steps or (40 if args.quick else 1500)
  spread = {"minilm": minilm_spread(args.seed),
            "decoder": decoder_spread(steps, args.quick, args.seed)}
  for name, kernels in spread.items():
    print(f"\n{name}")
    print(harness.format_table(["kernel", *COLUMNS],
                               [[p, *(v[c] for c in COLUMNS)] for p, v in kernels.items()]))
  medians = {name: {c: float(np.median([v[c] for v in kernels.values()])) for c in COLUMNS}
             for name, kernels in spread.items()}
  print("\nmedians over kernels")
  print(harness.format_table(["model", *COLUMNS],
                             [[name, *m.values()] for name, m in medians.items()]))
  harness.write_json(args.json, {"medians": medians, "input_spread": spread,
                                 "decoder_steps": steps})


if __name__ == "__main__":
  main()
