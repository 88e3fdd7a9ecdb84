"""The performance suite: runs every benchmark and prints their headline figures in one table.

The benchmarks are the scripts listed in ``BENCHMARKS``: the speed benchmarks of
``benchmarks/speed/`` and the quality experiments of ``benchmarks/quality/``. Each runs in its
own process with ``--json`` (and ``--quick``, ``--seed`` as given here); numbers and booleans of
its JSON (nested dicts flattened to dotted keys; for ``selection``, the speed-up and memory
ratio at each size) are listed, so a change can be compared figure by figure.

Run:
  python benchmarks/run_all.py --quick --json /tmp/suite.json
  python benchmarks/run_all.py --only step_overhead selection
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

BENCHMARKS = (
    "speed/step_overhead",
    "speed/selection",
    "speed/sharded_overhead",
    "speed/state_memory",
    "speed/any_model",
    "speed/calibration_cost",
    "quality/one_shot_quality",
    "quality/sparse_training",
    "quality/mixed_precision",
    "quality/dropout_ordering",
    "quality/minilm_pruning",
    "quality/minilm_calibration",
    "quality/minilm_mixed_precision",
    "quality/minilm_layer_sampling",
    "quality/dare_minilm",
    "quality/minilm_recovery",
    "quality/decoder_pruning",
    "quality/input_spread",
)
"""Every benchmark, as ``folder/name`` under ``benchmarks/``; ``--only`` takes the names."""


def parse_args():
  parser = harness.parser(__doc__, "pass --quick to every benchmark")
  parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")
  args = parser.parse_args()
  known = {os.path.basename(b): b for b in BENCHMARKS}
  unknown = sorted(set(args.only or ()) - set(known))
  if unknown:
    parser.error(f"unknown benchmarks {unknown}; known: {sorted(known)}")
  args.scripts = [known[n] for n in args.only] if args.only else list(BENCHMARKS)
  return args


def headline(figures: dict, prefix: str = "") -> dict[str, float | bool]:
  """Scalar figures of one benchmark's JSON, nested dicts flattened to dotted keys."""
  out = {}
  for key, value in figures.items():
    if isinstance(value, (bool, int, float)):
      out[prefix + key] = value
    elif isinstance(value, dict):
      out.update(headline(value, f"{prefix}{key}."))
  for row in figures.get("selection", []):
    out[f"selection.speedup@{row['n']:.0e}"] = row["sort_seconds"] / row["threshold_seconds"]
    out[f"selection.peak_ratio@{row['n']:.0e}"] = (row["threshold_peak_bytes"]
                                                  / row["sort_peak_bytes"])
    out[f"selection.exact@{row['n']:.0e}"] = row["exact"]
  return out


def run_one(script: str, args, tmp: str):
  """Runs ``benchmarks/<script>.py``: ``(its JSON or None if it failed, seconds)``."""
  name = os.path.basename(script)
  path = os.path.join(tmp, f"{name}.json")
  cmd = [sys.executable, os.path.join(HERE, f"{script}.py"), "--json", path,
         "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
  print(f"[{name}] running ...", flush=True)
  start = time.time()
  run = subprocess.run(cmd, capture_output=True, text=True, check=False)
  seconds = time.time() - start
  if run.returncode != 0 or not os.path.exists(path):
    print(run.stdout[-2000:] + run.stderr[-2000:])
    return None, f"exit {run.returncode}"
  with open(path) as f:
    return json.load(f), seconds


def main():
  args = parse_args()
  results, rows = {}, []
  with tempfile.TemporaryDirectory() as tmp:
    for script in args.scripts:
      name = os.path.basename(script)
      figures, seconds = run_one(script, args, tmp)
      if figures is None:
        rows.append([name, "FAILED", seconds])
        continue
      results[name] = figures
      for key, value in headline(figures).items():
        rows.append([name, key, value if isinstance(value, (bool, str)) else float(value)])
      rows.append([name, "wall_seconds", seconds])
  print(harness.format_table(["benchmark", "figure", "value"], rows))
  harness.write_json(args.json, results)
  if any(r[1] == "FAILED" for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  main()
