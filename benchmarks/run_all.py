"""The performance suite: runs every benchmark and prints their headline figures in one table.

Each ``benchmarks/*.py`` (except this file, ``common.py`` and private scripts ``_*.py`` such as
the fixture maker) runs in its own process with ``--json``; numbers and booleans of its JSON
(nested dicts flattened to dotted keys; for ``selection``, the speed-up and memory ratio at each
size) are listed, so a change can be compared figure by figure. Quick mode passes ``--quick`` to each.

Run:
  python benchmarks/run_all.py --quick --json /tmp/suite.json
  python benchmarks/run_all.py --only step_overhead selection
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def benchmark_names() -> list[str]:
  names = [os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(HERE, "*.py"))]
  return sorted(n for n in names if n not in ("run_all", "common") and not n.startswith("_"))


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
  parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")
  parser.add_argument("--json", default=None, help="write all figures to this JSON file")
  args = parser.parse_args()
  names = args.only or benchmark_names()
  results, rows = {}, []
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      path = os.path.join(tmp, f"{name}.json")
      cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), "--json", path]
      cmd += ["--quick"] if args.quick else []
      print(f"[{name}] running ...", flush=True)
      start = time.time()
      run = subprocess.run(cmd, capture_output=True, text=True, check=False)
      seconds = time.time() - start
      if run.returncode != 0 or not os.path.exists(path):
        print(run.stdout[-2000:] + run.stderr[-2000:])
        rows.append([name, "FAILED", f"exit {run.returncode}"])
        continue
      with open(path) as f:
        results[name] = json.load(f)
      for key, value in headline(results[name]).items():
        rows.append([name, key, value if isinstance(value, (bool, str)) else float(value)])
      rows.append([name, "wall_seconds", seconds])
  print(common.format_table(["benchmark", "figure", "value"], rows))
  if args.json:
    common.write_json(args.json, results)
  if any(r[1] == "FAILED" for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  main()
