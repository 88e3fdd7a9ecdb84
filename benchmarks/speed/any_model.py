"""Structure discovery and compaction on every zoo model, and discovery of a 1B model.

For each member of :mod:`impjax.models.zoo` (size ``small``; ``tiny`` with ``--quick``):
discover its groups from the traced computation, keep the better half (by weight magnitude)
of every layer's MLP units and heads (:func:`impjax.structure.keep_units`), compact the params
and re-run the model's own computation at the new widths (:func:`impjax.structure.compact_model`),
and compare with the masked model (the same units zeroed in the full arrays). Side by side, in
one run: XLA's cost-analysis FLOPs and the median jitted forward time of the compacted model
over the dense one (calls interleaved). Finally, the seconds to discover the structure of an
abstract Gemma-style decoder of about 1B parameters (``jax.ShapeDtypeStruct`` params: nothing
is allocated or computed).

Run:
  python benchmarks/speed/any_model.py --json /tmp/any_model.json
  python benchmarks/speed/any_model.py --quick
"""

from __future__ import annotations

import os
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import groups  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import gemma  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import zoo  # pylint: disable=g-import-not-at-top,wrong-import-position

FRACTION = 0.5
ONE_B = gemma.GemmaConfig(vocab_size=32_000, width=2048, depth=8, num_heads=8, num_kv_heads=1,
                          head_dim=256, mlp_dim=16_384)


def masked_params(params, s, keep):
  """The params with the dropped units zeroed (running statistics kept, as compaction drops
  them with their channel)."""
  masks = groups.coupled_masks(params, s.prunable(), keep)
  return jax.tree_util.tree_map_with_path(
      lambda path, v, m: v if "batch_stats" in tree_utils.path_str(path) else jnp.where(m, v, 0),
      params, masks)


def measure(name: str, size: str, repeats: int) -> dict:
  member = zoo.build(name, size)
  start = time.perf_counter()
  s = structure.discover(member.apply, member.params, *member.inputs)
  discovery = time.perf_counter() - start
  keep = structure.keep_units(s, jax.tree.map(jnp.abs, member.params), FRACTION)
  small, small_fn = structure.compact_model(member.apply, member.params, s, keep, *member.inputs)
  dense_fn, compact_fn = jax.jit(member.apply), jax.jit(small_fn)
  want = dense_fn(masked_params(member.params, s, keep), *member.inputs)
  diff = float(jnp.max(jnp.abs(compact_fn(small, *member.inputs) - want)))
  flops = (harness.xla_flops(small_fn, small, *member.inputs)
           / harness.xla_flops(member.apply, member.params, *member.inputs))
  calls = {"dense": lambda i: dense_fn(member.params, *member.inputs),
           "compacted": lambda i: compact_fn(small, *member.inputs)}
  harness.interleaved(calls, 2)  # warm-up
  times = harness.interleaved(calls, repeats)
  return {"model": name, "params": harness.tree_size(member.params),
          "compacted_params": harness.tree_size(small),
          "discovery_seconds": discovery,
          "groups": {kind: sum(g.kind == kind for g in s.groups.values())
                     for kind in sorted({g.kind for g in s.groups.values()})},
          "compacted_max_diff": diff, "flops_ratio": flops,
          "time_ratio": harness.median(times["compacted"]) / harness.median(times["dense"])}


def abstract_gemma(config: gemma.GemmaConfig):
  """``(apply, abstract params, abstract ids)`` of a Gemma model that is never allocated."""
  abstract = nnx.eval_shape(lambda: gemma.Gemma(config, rngs=nnx.Rngs(0)))
  graphdef = nnx.graphdef(abstract)
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  apply = lambda p, ids: nnx.merge(graphdef, p)(ids)
  return apply, params, jax.ShapeDtypeStruct((1, 2048), jnp.int32)


def main():
  args = harness.parser(__doc__, "tiny models, fewer repeats").parse_args()
  size, repeats = ("tiny", 5) if args.quick else ("small", 15)
  rows = []
  for name in zoo.NAMES:
    print(f"{name} ({size}) ...", flush=True)
    rows.append(measure(name, size, repeats))
  apply, params, ids = abstract_gemma(ONE_B)
  start = time.perf_counter()
  s = structure.discover(apply, params, ids)
  one_b = time.perf_counter() - start
  one_b_params = harness.tree_size(params)
  print(harness.format_table(
      ["model", "params", "discovery s", "groups", "max |diff|", "FLOPs ratio", "time ratio"],
      [[r["model"], r["params"], f"{r['discovery_seconds']:.2f}",
        sum(r["groups"].values()), f"{r['compacted_max_diff']:.1e}",
        f"{r['flops_ratio']:.3f}", f"{r['time_ratio']:.3f}"] for r in rows]))
  print(f"abstract Gemma-style decoder, {one_b_params / 1e9:.2f}B params: discovery "
        f"{one_b:.2f} s, {len(s.prunable())} prunable groups")
  harness.write_json(args.json, {"fraction": FRACTION, "size": size, "models": rows,
                                 "discovery_1b_seconds": one_b,
                                 "discovery_1b_params": one_b_params})


if __name__ == "__main__":
  main()
