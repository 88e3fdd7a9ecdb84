"""Global top-k selection: impjax's radix select against sort-based selection.

Scores of N float32 values spread over 16 leaves of unequal sizes; keep the top half. Sort
baseline: ``jnp.sort`` of the concatenation, then a threshold compare (the cheapest sort-based
selection; inexact under ties). impjax: ``select.topk`` (two 16-bit histogram passes, exact
tie-break, no concatenation). Both jitted; time is the median over repeats after a warm-up;
peak bytes are XLA's compiled temporaries plus outputs (``memory_analysis``).

Run:
  python benchmarks/selection.py --json /tmp/selection.json          # 1M, 10M, 100M
  python benchmarks/selection.py --quick                             # 1M, 10M
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from impjax import select

import common


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


def measure(fn, leaves, repeats):
  jitted = jax.jit(fn, static_argnums=1)
  compiled = jitted.lower(leaves, 0.5).compile()
  memory = compiled.memory_analysis()
  peak = int(memory.temp_size_in_bytes + memory.output_size_in_bytes)
  masks = jax.block_until_ready(compiled(leaves))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(leaves))
    times.append(time.perf_counter() - start)
  kept = sum(int(m.sum()) for m in masks)
  return float(np.median(times)), peak, kept


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", default=None, help="write the figures to this JSON file")
  parser.add_argument("--quick", action="store_true", help="1M and 10M scores only")
  args = parser.parse_args()
  sizes = (1_000_000, 10_000_000) if args.quick else (1_000_000, 10_000_000, 100_000_000)
  rows = []
  for n in sizes:
    leaves = make_scores(n)
    repeats = 5 if n <= 10_000_000 else 2
    sort_s, sort_peak, sort_kept = measure(sort_select, leaves, repeats)
    thr_s, thr_peak, thr_kept = measure(radix_select, leaves, repeats)
    want = n - int(np.floor(0.5 * n + 0.5))
    rows.append({"n": n, "sort_seconds": sort_s, "threshold_seconds": thr_s,
                 "sort_peak_bytes": sort_peak, "threshold_peak_bytes": thr_peak,
                 "speedup": sort_s / thr_s, "peak_ratio": thr_peak / sort_peak,
                 "exact": thr_kept == want, "sort_exact": sort_kept == want})
    del leaves
  print(common.format_table(
      ["n", "sort s", "radix s", "speedup", "sort peak MB", "radix peak MB", "exact"],
      [[r["n"], r["sort_seconds"], r["threshold_seconds"], f"{r['speedup']:.1f}x",
        f"{r['sort_peak_bytes'] / 2**20:.0f}", f"{r['threshold_peak_bytes'] / 2**20:.0f}",
        r["exact"]] for r in rows]))
  if args.json:
    common.write_json(args.json, {"selection": rows, "device": str(jax.devices()[0])})


if __name__ == "__main__":
  main()
