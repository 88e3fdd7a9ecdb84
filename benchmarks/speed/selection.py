"""Global top-k selection: impjax's radix select against sort-based selection.

Scores of N float32 values spread over 16 leaves of unequal sizes; keep the top half. Sort
baseline: ``jnp.sort`` of the concatenation, then a threshold compare (the cheapest sort-based
selection; inexact under ties). impjax: ``select.topk`` (two 16-bit histogram passes, exact
tie-break, no concatenation). Both jitted and timed in alternation; time is the median over
repeats after a warm-up; peak bytes are XLA's compiled temporaries plus outputs
(``memory_analysis``).

Run:
  python benchmarks/speed/selection.py --json /tmp/selection.json    # 1M, 10M, 100M
  python benchmarks/speed/selection.py --quick                       # 1M, 10M
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import select  # pylint: disable=g-import-not-at-top,wrong-import-position

SPARSITY = 0.5


def make_scores(n: int, leaves: int = 16, seed: int = 0) -> list[jax.Array]:
  weights = np.arange(1, leaves + 1, dtype=np.float64)
  sizes = np.floor(weights / weights.sum() * n).astype(int)
  sizes[-1] += n - sizes.sum()
  key = jax.random.key(seed)
  return [jax.random.normal(jax.random.fold_in(key, i), (int(s),), jnp.float32)
          for i, s in enumerate(sizes)]


def sort_select(leaves, sparsity):
  flat = jnp.concatenate(leaves)
  k = int(sparsity * flat.size)
  threshold = jnp.sort(flat)[k - 1]
  return [x > threshold for x in leaves]


def radix_select(leaves, sparsity):
  return select.topk(leaves, sparsity)


def measure(leaves, repeats):
  """``{"sort"|"radix": (median seconds, peak bytes, kept values)}`` of both selections."""
  executables = {name: harness.compiled(fn, leaves, SPARSITY, static_argnums=(1,))
                 for name, fn in (("sort", sort_select), ("radix", radix_select))}
  calls = {name: (lambda i, e=e: e(leaves)) for name, e in executables.items()}
  kept = {}
  harness.interleaved(calls, 1, on_result=lambda name, i, masks: kept.setdefault(
      name, sum(int(m.sum()) for m in masks)))  # warm-up
  times = harness.interleaved(calls, repeats)
  out = {}
  for name, executable in executables.items():
    memory = harness.xla_memory(executable)
    out[name] = (harness.median(times[name]), memory["temp_bytes"] + memory["output_bytes"],
                 kept[name])
  return out


def row(n, seed):
  leaves = make_scores(n, seed=seed)
  m = measure(leaves, 5 if n <= 10_000_000 else 2)
  (sort_s, sort_peak, sort_kept), (thr_s, thr_peak, thr_kept) = m["sort"], m["radix"]
  want = n - int(np.floor(SPARSITY * n + 0.5))
  return {"n": n, "sort_seconds": sort_s, "threshold_seconds": thr_s,
          "sort_peak_bytes": sort_peak, "threshold_peak_bytes": thr_peak,
          "speedup": sort_s / thr_s, "peak_ratio": thr_peak / sort_peak,
          "exact": thr_kept == want, "sort_exact": sort_kept == want}


def main():
  args = harness.parser(__doc__, "1M and 10M scores only").parse_args()
  sizes = (1_000_000, 10_000_000) if args.quick else (1_000_000, 10_000_000, 100_000_000)
  rows = [row(n, args.seed) for n in sizes]
  print(harness.format_table(
      ["n", "sort s", "radix s", "speedup", "sort peak MB", "radix peak MB", "exact"],
      [[r["n"], r["sort_seconds"], r["threshold_seconds"], f"{r['speedup']:.1f}x",
        f"{r['sort_peak_bytes'] / 2**20:.0f}", f"{r['threshold_peak_bytes'] / 2**20:.0f}",
        r["exact"]] for r in rows]))
  harness.write_json(args.json, {"selection": rows, "device": str(jax.devices()[0])})


if __name__ == "__main__":
  main()
