"""The benchmark harness: what every script of ``benchmarks/speed/`` and ``benchmarks/quality/``
shares, so no script imports another.

Importing it puts the repository root on ``sys.path``, so the scripts also import the main job's
config (``configs/default.py``) and builders (``launch/train.py``). It provides:

* flags: :func:`parser`, every script's parser, with ``--json PATH``, ``--quick`` and ``--seed``
  (:func:`flags`, the one argparse parent), and :func:`add_training_flags` (``--seeds``,
  ``--steps``) with :func:`training_seeds` for the scripts that retrain per seed;
* timing: :func:`interleaved` runs calls in rounds, one call of each per round in an order
  rotated every round, and times every call up to ``block_until_ready`` of its outputs; the
  scripts take medians (:func:`median`) or minima of the per-call seconds. The one-call forms:
  :func:`step_seconds` (a state carried from step to step) and :func:`call_seconds`;
* XLA: :func:`compiled`, :func:`xla_memory` (buffer sizes of a compiled function),
  :func:`xla_flops` and :func:`backward_flops` (FLOPs of a layer stack's backward pass);
* bytes: :func:`tree_bytes` (a pytree of arrays or of shapes), :func:`tree_size`;
* SparseGPT: :func:`sparsegpt_reference` (the published algorithm in float64 numpy) and
  :func:`sparsegpt_speed` (impjax's SparseGPT against it, time and reconstruction error);
* results: :func:`format_table` and :func:`write_json`;
* digits: :func:`digits_config`, :func:`load_digits`, :func:`init_model`, :func:`train_dense`
  (the main job's dense phase) and :func:`empirical_fisher`;
* mixed precision: the bit choices, budgets and scheme both mixed-precision benchmarks use,
  :func:`uniform_bits` and :func:`lowering_bits`;
* one-shot pruning: :func:`trained_decoder` (the decoder benchmarks' model, trained by the
  language-modelling protocol) and :func:`input_spread` (how unequal each kernel's input
  channels are, and how much Wanda's mask differs from per-output magnitude's);
* MiniLM: :func:`params_of`, :func:`nonzero_params`, :func:`time_ratio`, :class:`Evaluation`
  (dense reference embeddings and a pruned model's metrics against them),
  :func:`evaluation_sets`, :func:`source_sentences`, :func:`one_shot_kwargs`, :func:`metric_key`,
  and the retrieval fine-tuning pieces :func:`retrieval_task`, :func:`fixed_length`,
  :func:`retrieval_batches`, :func:`retrieval_finetune`, :func:`retrieval_hits`.

Scripts import it after putting ``benchmarks/`` on ``sys.path``::

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import harness
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
import tokenizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from tqdm import tqdm  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import estimators  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import pruning  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import quantization  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import scores  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import select  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax import tree_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import language_modeling as lm  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.data import text  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.flax import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.models import zoo  # pylint: disable=g-import-not-at-top,wrong-import-position
from impjax.transforms import layer_stack  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch import train  # pylint: disable=g-import-not-at-top,wrong-import-position


# ------------------------------------------------------------------------------------- flags
def flags(quick_help: str = "a short smoke run") -> argparse.ArgumentParser:
  """The argparse parent of every benchmark: ``--json PATH``, ``--quick`` and ``--seed``."""
  parent = argparse.ArgumentParser(add_help=False)
  parent.add_argument("--json", default=None, metavar="PATH",
                      help="write the figures to this JSON file")
  parent.add_argument("--quick", action="store_true", help=quick_help)
  parent.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
  return parent


def parser(doc: str, quick_help: str = "a short smoke run") -> argparse.ArgumentParser:
  """A script's parser: described by the first line of its docstring ``doc``, with
  :func:`flags`; the script adds its own options."""
  return argparse.ArgumentParser(description=doc.splitlines()[0], parents=[flags(quick_help)])


def add_training_flags(parser: argparse.ArgumentParser, seeds: int) -> None:
  """``--seeds N`` (train with seeds ``--seed`` .. ``--seed + N - 1``; default ``seeds``, quick
  1) and ``--steps`` (dense training steps) of the benchmarks that retrain per seed; read them
  with :func:`training_seeds`."""
  parser.add_argument("--seeds", type=int, default=None,
                      help=f"training seeds --seed .. --seed + n - 1 to average over "
                           f"(default {seeds}, quick 1)")
  parser.add_argument("--steps", type=int, default=None,
                      help="dense training steps (default: config.pruning.begin_step = 1500)")
  parser.set_defaults(default_seeds=seeds)


def training_seeds(args: argparse.Namespace) -> list[int]:
  """The training seeds of :func:`add_training_flags`."""
  n = args.seeds or (1 if args.quick else args.default_seeds)
  return list(range(args.seed, args.seed + n))


# ------------------------------------------------------------------------------------ timing
def interleaved(calls: Mapping[str, Callable[[int], Any]], rounds: int, *, rotate: bool = True,
                on_result: Callable[[str, int, Any], None] | None = None,
                progress: str | None = None) -> dict[str, np.ndarray]:
  """Seconds of every call of ``calls[name](i)`` for rounds ``i = 0 .. rounds - 1``.

  Each round calls every entry once, in the order of ``calls`` rotated by ``i`` places
  (``rotate``) or as given, so the entries see the same background load; each call is timed up
  to ``jax.block_until_ready`` of its outputs. ``on_result(name, i, outputs)`` runs after each
  call, outside the timing (to carry a train state into the next round). ``progress``: a tqdm
  bar with this description over the rounds.

  Returns:
    ``{name: array of rounds seconds}``.
  """
  names = list(calls)
  times = {name: np.zeros(rounds) for name in names}
  for i in tqdm(range(rounds), desc=progress, disable=progress is None):
    shift = i % len(names) if rotate else 0
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      outputs = jax.block_until_ready(calls[name](i))
      times[name][i] = time.perf_counter() - start
      if on_result is not None:
        on_result(name, i, outputs)
  return times


def median(seconds: Sequence[float]) -> float:
  return float(np.median(seconds))


def step_seconds(step: Callable, state: tuple, batches: Sequence[Any], repeats: int) -> float:
  """Median seconds of ``state = step(*state, batch)`` over ``repeats`` calls cycling through
  ``batches`` (the state carried from call to call)."""
  carried = [state]

  def keep(name, i, outputs):
    del name, i
    carried[0] = outputs

  return median(interleaved({"step": lambda i: step(*carried[0], batches[i % len(batches)])},
                            repeats, on_result=keep)["step"])


def call_seconds(fn: Callable, args: tuple, repeats: int) -> float:
  """Median seconds of ``fn(*args)`` over ``repeats`` calls after one warm-up call."""
  calls = {"call": lambda i: fn(*args)}
  interleaved(calls, 1)  # warm-up
  return median(interleaved(calls, repeats)["call"])


# --------------------------------------------------------------------------------------- XLA
def compiled(fn: Callable, *args, static_argnums: Sequence[int] = ()):
  """``fn`` jitted, lowered for ``args`` and compiled by XLA."""
  return jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()


def xla_memory(executable) -> dict:
  """XLA's buffer sizes of a compiled function (no donation): arguments, temporaries, outputs."""
  stats = executable.memory_analysis()
  return {"total_bytes": int(stats.argument_size_in_bytes + stats.temp_size_in_bytes
                             + stats.output_size_in_bytes),
          "argument_bytes": int(stats.argument_size_in_bytes),
          "temp_bytes": int(stats.temp_size_in_bytes),
          "output_bytes": int(stats.output_size_in_bytes)}


def xla_flops(fn: Callable, *args) -> float:
  """XLA's cost-analysis FLOPs of ``fn`` compiled for ``args``."""
  return float(compiled(fn, *args).cost_analysis()["flops"])


def backward_flops(loss_fn, block, params, batch, idx, train_rest=True):
  """XLA's FLOPs of ``value_and_grad`` minus the forward's, blocks unrolled, ``idx`` (a tuple
  of ints, or ``None`` for every block) trained, and the rest too if ``train_rest``: the ops
  a layer-sampled step runs. ``params["blocks"]`` is the layer stack; ``loss_fn(params, batch,
  run=...)`` runs it through ``run``.

  Returns:
    ``(backward FLOPs, forward FLOPs)``.
  """
  stack = params["blocks"]
  depth = layer_stack.num_layers(stack)
  active_idx = tuple(range(depth)) if idx is None else idx

  def unrolled(rest, active):
    def run(h):
      for layer in range(depth):
        if layer in active_idx:
          p = jax.tree.map(lambda a, j=active_idx.index(layer): a[j], active)
        else:
          p = jax.tree.map(lambda a, l=layer: jax.lax.stop_gradient(a[l]), stack)
        h = block(p, h)
      return h
    return loss_fn(tree_utils.set_path(rest, "blocks", stack), batch, run=run)

  rest = tree_utils.set_path(params, "blocks", None)
  active = layer_stack.gather(stack, jnp.asarray(active_idx))
  forward = xla_flops(unrolled, rest, active)
  both = xla_flops(jax.value_and_grad(unrolled, argnums=(0, 1) if train_rest else 1), rest,
                   active)
  return both - forward, forward


# ------------------------------------------------------------------------------------- bytes
def tree_bytes(tree: Any) -> int:
  """Bytes of a pytree's arrays, or of its ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``)."""
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def tree_size(tree: Any) -> int:
  """Number of values in a pytree's arrays (or ``jax.ShapeDtypeStruct`` s)."""
  return int(sum(math.prod(getattr(x, "shape", np.shape(x))) for x in jax.tree.leaves(tree)))


# --------------------------------------------------------------------------------- SparseGPT
def sparsegpt_reference(kernel: np.ndarray, hessian: np.ndarray, *, sparsity: float = 0.0,
                        n: int = 0, m: int = 0, blocksize: int = 128, damp: float = 0.01
                        ) -> tuple[np.ndarray, np.ndarray]:
  """SparseGPT's published algorithm (Frantar & Alistarh 2023, Algorithm 1) in float64 numpy,
  in its own layout ``W (out, in)``: ``(new kernel, keep mask)`` of a Flax kernel ``(in, out)``.

  The inverse Hessian's upper Cholesky factor, rows visited block by block; in a block the
  unstructured mask is the lowest ``sparsity`` share of ``w^2 / d^2`` (N:M: per group of ``m``
  inputs, chosen when the group is reached), each input's error pushed onto the block's later
  inputs, and the block's errors onto every later block.
  """
  w = np.array(kernel, np.float64).T
  h = np.array(hessian, np.float64)
  dead = np.diag(h) == 0
  h[dead, dead] = 1.0
  w[:, dead] = 0.0
  h += damp * np.mean(np.diag(h)) * np.eye(len(h))
  u = np.linalg.cholesky(np.linalg.inv(h)).T
  pruned = np.zeros(w.shape, bool)
  rows = np.arange(w.shape[0])[:, None]
  for i1 in range(0, w.shape[1], blocksize):
    i2 = i1 + blocksize
    w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
    q1, err1 = np.zeros_like(w1), np.zeros_like(w1)
    mask1 = np.zeros(w1.shape, bool)
    if not m:
      score = (w1 ** 2 / np.diag(u1)[None] ** 2).reshape(-1)
      mask1.reshape(-1)[np.argsort(score, kind="stable")[:int(round(sparsity * score.size))]] = True
    for i in range(blocksize):
      if m and i % m == 0:
        score = w1[:, i:i + m] ** 2 / np.diag(u1)[None, i:i + m] ** 2
        mask1[rows, i + np.argsort(score, axis=1, kind="stable")[:, :m - n]] = True
      col, d = w1[:, i], u1[i, i]
      q = np.where(mask1[:, i], 0.0, col)
      err = (col - q) / d
      w1[:, i:] -= np.outer(err, u1[i, i:])
      q1[:, i], err1[:, i] = q, err
    w[:, i1:i2] = q1
    w[:, i2:] -= err1 @ u[i1:i2, i2:]
    pruned[:, i1:i2] = mask1
  return w.T, ~pruned.T


def sparsegpt_speed(sizes: Sequence[int], *, seed: int = 0, blocksize: int = 128,
                    repeats: int = 5) -> list[dict]:
  """impjax's jitted SparseGPT (warm, median of ``repeats`` calls, the two modes interleaved)
  against :func:`sparsegpt_reference`
  (one call) on ``(n, n)`` kernels of every size, unstructured 50% and 2:4. A kernel's Hessian
  is the Gram matrix of ``2n`` correlated inputs of unequal scales.

  Returns:
    Rows ``{kernel, mode, impjax_seconds, reference_seconds, impjax_error, reference_error,
    mask_agreement}``: the errors are ``tr(D^T H D)`` of each result over that of the same
    mask without weight updates, the agreement the share of entries both keep or both prune.
  """
  rng = np.random.default_rng(seed)
  kernels = {}
  for n in sizes:
    mixing = np.eye(n, dtype=np.float32) + rng.standard_normal((n, n), np.float32) / np.sqrt(n)
    x = jnp.asarray(rng.standard_normal((2 * n, n), np.float32)) @ jnp.asarray(mixing)
    x = x * jnp.linspace(0.2, 3.0, n)
    kernels[f"{n}x{n}"] = (rng.standard_normal((n, n), np.float32), x.T @ x / (2 * n))
  modes = {"unstructured": {"sparsity": 0.5}, "2:4": {"n": 2, "m": 4}}
  rows = []
  for name, (kernel, hessian) in kernels.items():
    w = jnp.asarray(kernel, jnp.float32)
    h = jnp.asarray(hessian, jnp.float32)
    block = math.gcd(w.shape[0], blocksize)
    calls = {mode: lambda i, kw=kw: pruning.sparsegpt(w, h, blocksize=block, **kw)
             for mode, kw in modes.items()}
    interleaved(calls, 1)  # compiles both
    seconds = interleaved(calls, repeats)  # the two modes alternate, under the same load
    w64, h64 = np.asarray(w, np.float64), np.asarray(h, np.float64)
    error = lambda new_w: float(np.sum((w64 - new_w) * (h64 @ (w64 - new_w))))
    for mode, kwargs in modes.items():
      new, keep = calls[mode](0)
      start = time.perf_counter()
      ref, ref_keep = sparsegpt_reference(w64, h64, blocksize=block, **kwargs)
      reference_seconds = time.perf_counter() - start
      mask_only = error(np.where(ref_keep, w64, 0.0))
      rows.append({"kernel": name, "mode": mode, "impjax_seconds": median(seconds[mode]),
                   "reference_seconds": reference_seconds,
                   "impjax_error": error(np.asarray(new, np.float64)) / mask_only,
                   "reference_error": error(ref) / mask_only,
                   "mask_agreement": float(np.mean(np.asarray(keep) == ref_keep))})
      print(f"sparsegpt {name} {mode:12s} impjax {rows[-1]['impjax_seconds']:.3f}s reference "
            f"{reference_seconds:.3f}s error {rows[-1]['impjax_error']:.4f} vs "
            f"{rows[-1]['reference_error']:.4f}", flush=True)
  return rows


# ----------------------------------------------------------------------------------- results
def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain-text table; floats are printed with 4 decimals."""
  cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
  widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write_json(path: str | None, value: Any) -> None:
  """Writes ``value`` as indented JSON to ``path`` (nothing when ``path`` is empty), creating the
  parent directory."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


# ------------------------------------------------------------------------------------ digits
FISHER_CHUNK = 128  # examples per per-example-gradient chunk (memory only; result is exact)


def digits_config(model: str = "mlp", seed: int = 0) -> ml_collections.ConfigDict:
  """The main job's defaults (``configs/default.py``) with the ``model`` (``mlp`` or ``cnn``)
  and ``seed``."""
  config = default.get_config()
  config.model.name = model
  config.seed = seed
  return config


def load_digits(config: ml_collections.ConfigDict) -> tuple[dict, dict, int]:
  """``(train, test, num_classes)`` of the configured dataset, as the main job loads them."""
  data_dir = config.data_dir or None
  train_data = data_lib.load_split(config.dataset, config.train_split, data_dir)
  test_data = data_lib.load_split(config.dataset, config.test_split, data_dir)
  num_classes = int(max(train_data["label"].max(), test_data["label"].max())) + 1
  return train_data, test_data, num_classes


def init_model(config: ml_collections.ConfigDict, train_data: dict, num_classes: int):
  """``(graphdef, params)`` of the configured model (``launch/train.py``'s ``build_model``;
  params a pure dict, as the main job)."""
  model = train.build_model(config, train_data["image"][0], num_classes)
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def train_dense(config: ml_collections.ConfigDict, train_data: dict, num_classes: int,
                steps: int):
  """Trains the configured model for ``steps`` AdamW steps without pruning.

  Same model init, data stream (``batches_from_step`` seeded by ``config.seed``), optimizer
  hyper-parameters and train step (``impjax.flax.training.make_train_step``) as
  ``launch/train.py``'s ``train_and_evaluate``; before its pruning begins, the pruning wrapper
  there is the identity, so this is exactly its dense phase.

  Returns:
    ``(graphdef, params)``.
  """
  graphdef, params = init_model(config, train_data, num_classes)
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = tx.init(params)
  step_fn = training.make_train_step(graphdef, tx)
  stream = data_lib.batches_from_step(train_data, config.batch_size, seed=config.seed)
  for _ in range(steps):
    params, opt_state, _ = step_fn(params, opt_state, next(stream))
  return graphdef, params


def loss_of(graphdef) -> Callable:
  """``(params, batch) -> mean cross-entropy`` of the model ``graphdef``."""
  return lambda params, batch: training.cross_entropy(graphdef, params, batch)[0]


def empirical_fisher(graphdef, params, train_data):
  """``(1/N) sum_i g_i^2`` over every training example (per-example gradients)."""
  loss = loss_of(graphdef)

  def sum_of_squares(p, batch):  # sum (not mean) over the chunk, so the total is exact
    n = batch["label"].shape[0]
    return jax.tree.map(lambda f: f * n, scores.fisher_per_sample(loss, p, batch))

  chunks = data_lib.batches(train_data, FISHER_CHUNK, seed=0, shuffle=False,
                            drop_remainder=False)
  total = estimators.calibrate(estimators.sum(lambda p, g: g), params, chunks, sum_of_squares,
                               progress=False)
  n = len(train_data["label"])
  return jax.tree.map(lambda t: t / n, total)


# --------------------------------------------------------------------------- mixed precision
CHOICES = (2, 3, 4, 5, 6, 8)  # bit-widths a unit may take
AVG_BITS = (3, 4, 5)  # the average-bit budgets compared
SCHEME = quantization.Scheme(channel_axes=(-1,))  # symmetric, per output channel, "hawq"


def uniform_bits(sizes, avg, params, the_plan):
  """Every unit at ``avg`` bits (``sizes``: ``select.unit_sizes``)."""
  indices = jax.tree.map(lambda n: np.full(n.shape, CHOICES.index(avg)), sizes)
  return select.to_bits(indices, CHOICES, params, the_plan)


def lowering_bits(importance, params, the_plan, avg):
  """Layer-Wise Quantization at ``avg`` bits with ``avg - 1`` / ``avg + 1`` bits."""
  return select.order_bits(importance, params, the_plan, avg - 1, avg + 1, float(avg))


# ------------------------------------------------------------------------------------ MiniLM
def params_of(model) -> dict:
  """The ``nnx.Param`` values of ``model`` as a pure dict."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def nonzero_params(model) -> int:
  return int(sum(np.count_nonzero(np.asarray(x)) for x in jax.tree.leaves(params_of(model))))


@jax.jit(static_argnums=0)
def _encode(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state).encode(ids, mask)


def time_ratio(model, dense_model, batch, repeats=7) -> float:
  """CPU time of one jitted ``encode`` of ``batch`` over the dense model's: both are timed
  in alternation (after a warm-up call each) and the ratio of their best times is returned,
  so load from other processes hits both alike."""
  calls = {}
  for name, m in (("model", model), ("dense", dense_model)):
    graphdef, state = nnx.split(m)
    calls[name] = (lambda i, g=graphdef, s=state: _encode(g, s, batch["ids"], batch["mask"]))
  interleaved(calls, 1, rotate=False)  # warm-up
  times = interleaved(calls, repeats, rotate=False)
  return float(times["model"].min()) / float(times["dense"].min())


def metric_key(source: str, metric: str) -> str:
  """The result key of ``metric`` on ``source``'s evaluation set: the reference pages' bare
  (``fidelity``), another source's prefixed with its name (``docstrings_fidelity``)."""
  return metric if source == text.SOURCES[0] else f"{source}_{metric}"


class Evaluation:
  """Dense reference embeddings and the metrics of a pruned model against them.

  ``sets`` maps an evaluation source (``text.SOURCES``) to its ``(queries, passages)``, each
  set's metrics keyed by :func:`metric_key`. Mean length and the timing batch come from the
  first set.
  """

  def __init__(self, model, tok, sets: dict, batch_size):
    self.tok, self.batch_size, self.sets = tok, batch_size, sets
    self.texts = [t for queries, passages in sets.values() for t in queries + passages]
    self.model = model
    self.dense = self.embed(model)
    queries, passages = next(iter(sets.values()))
    lengths = [sum(tok.encode(t).attention_mask) for t in queries + passages]
    self.tokens = int(round(np.mean(lengths)))
    timing_texts = (passages * 2)[:64]
    self.timing_batch = minilm.tokenize(tok, timing_texts)
    self.timing_batch = {k: np.pad(v, ((0, 0), (0, max(0, 64 - v.shape[1]))))[:, :64]
                         for k, v in self.timing_batch.items()}
    self.dense_flops = minilm.encoder_flops(params_of(model), model.config, self.tokens)

  def embed(self, model):
    return minilm.embed_texts(model, self.tok, self.texts, self.batch_size)

  def quality(self, model):
    """``({"fidelity", "retrieval_top1", ...}, {source: per-query hits})`` of ``model``."""
    emb, start, out, hits = self.embed(model), 0, {}, {}
    for name, (queries, passages) in self.sets.items():
      n, end = len(queries), start + len(queries) + len(passages)
      hits[name] = metrics.retrieval_hits(emb[start:start + n], emb[start + n:end])
      out[metric_key(name, "fidelity")] = metrics.fidelity(emb[start:end], self.dense[start:end])
      out[metric_key(name, "retrieval_top1")] = float(np.mean(hits[name]))
      start = end
    return out, hits

  def cost(self, model):
    """Nonzero parameters, and FLOPs and CPU time over the dense model's."""
    return {"params": nonzero_params(model),
            "flops_ratio": minilm.encoder_flops(params_of(model), model.config, self.tokens)
                           / self.dense_flops,
            "time_ratio": time_ratio(model, self.model, self.timing_batch)}

  def __call__(self, model):
    return {**self.quality(model)[0], **self.cost(model)}


def fixed_length(tokenizer, texts, length):
  """``{"ids", "mask"}`` of ``texts`` truncated and padded to exactly ``length`` tokens."""
  tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  tok.enable_truncation(length)
  tok.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, length=length)
  return minilm.tokenize(tok, texts)


def retrieval_batches(tokenizer, settings, seed, source="docstrings"):
  """``settings["steps"]`` batches (``settings["batch"]`` pairs, queries and passages cut to
  ``query_len`` / ``passage_len`` tokens) of ``source``'s calibration (query, passage) pairs,
  reshuffled every epoch (seeded)."""
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


class RetrievalTask(NamedTuple):
  """The pretrained MiniLM and its retrieval evaluation, as the fine-tuning benchmarks use it:
  ``top1(params)`` is the retrieval top-1 over ``pairs`` evaluation pairs of the docstrings."""
  model: Any
  tokenizer: Any
  graphdef: Any
  pretrained: dict
  settings: dict
  pairs: int
  top1: Callable[[dict], float]


def retrieval_task(steps: int, pairs: int | None = None) -> RetrievalTask:
  """:class:`RetrievalTask` with ``steps`` fine-tuning batches of 16 pairs (queries cut to 32
  tokens, passages to 64) and the first ``pairs`` evaluation pairs (all: ``None``)."""
  model, tokenizer = minilm.load_pretrained()
  graphdef, state = nnx.split(model)
  queries, passages = text.retrieval_pairs("evaluation", "docstrings")
  queries, passages = queries[:pairs], passages[:pairs]

  def top1(params):
    return float(np.mean(retrieval_hits(nnx.merge(graphdef, params), tokenizer, queries,
                                        passages)))
  settings = {"steps": steps, "batch": 16, "query_len": 32, "passage_len": 64}
  return RetrievalTask(model, tokenizer, graphdef, nnx.to_pure_dict(state), settings,
                       len(queries), top1)


def retrieval_finetune(graphdef, params, tx, batches, log_every: int = 20):
  """``params`` fine-tuned with ``tx`` on the contrastive retrieval loss over ``batches``
  (:func:`retrieval_batches`), one jitted step per batch; ``(params, opt_state)``."""
  def loss(params, batch):
    m = nnx.merge(graphdef, params)
    return metrics.contrastive_loss(m.encode(batch["q_ids"], batch["q_mask"]),
                                    m.encode(batch["p_ids"], batch["p_mask"]))

  @jax.jit
  def step(params, opt_state, batch):
    value, grads = jax.value_and_grad(loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state = tx.init(params)
  for i, batch in enumerate(batches):
    params, opt_state, value = step(params, opt_state, batch)
    if i % log_every == 0:
      print(f"step {i:3d}  loss {float(value):.4f}", flush=True)
  return params, opt_state


def retrieval_hits(model, tokenizer, queries, passages) -> np.ndarray:
  """Per query: is its own passage the most cosine-similar of all passages (MiniLM embeddings)."""
  emb = minilm.embed_texts(model, tokenizer, queries + passages)
  return metrics.retrieval_hits(emb[:len(queries)], emb[len(queries):])


def evaluation_sets(quick: bool) -> dict:
  """``{source: (queries, passages)}`` of every evaluation split, the reference pages first;
  16 pairs each when ``quick``."""
  n = 16 if quick else None
  return {source: tuple(x[:n] for x in text.retrieval_pairs("evaluation", source))
          for source in text.SOURCES}


def source_sentences(source: str, seed: int) -> list[str]:
  """The sentences of ``reference`` (the calibration split) or ``docstrings``, in a shuffle
  seeded by ``seed``."""
  sentences = text.sentences("calibration", source)
  return [sentences[i] for i in np.random.default_rng(seed).permutation(len(sentences))]


def one_shot_kwargs(sparsity) -> dict:
  """``pruning.prune_layerwise`` keywords of a sparsity: a fraction, or ``"n:m"``."""
  if isinstance(sparsity, str):
    return {"n_of_m": tuple(int(v) for v in sparsity.split(":"))}
  return {"sparsity": sparsity}


class MiniLMFunction(NamedTuple):
  """:func:`minilm_function`'s MiniLM as any model: ``apply(params, ids, mask)``, its params,
  the calibration batches as ``apply``'s inputs, their token masks, and the structure
  discovered from ``apply``."""
  apply: Callable
  params: Any
  inputs: list
  token_masks: list
  structure: structure.Structure


def minilm_function(model, token_batches: Sequence[dict]) -> MiniLMFunction:
  """MiniLM as a plain function of its params, with ``token_batches`` (``{"ids", "mask"}``)
  as the inputs that ``structure.prune_sequential`` and ``batch_moments`` take."""
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  apply = lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask)
  inputs = [(b["ids"], b["mask"]) for b in token_batches]
  return MiniLMFunction(apply, params, inputs, [b["mask"] for b in token_batches],
                        structure.discover(apply, params, *inputs[0]))


class TrainedDecoder(NamedTuple):
  """:func:`trained_decoder`'s model: the zoo member, its chosen params, the protocol's splits,
  the validation curve ``[(step, perplexity)]`` and the protocol."""
  member: Any
  params: Any
  data: Any
  curve: list
  protocol: Any


def trained_decoder(steps: int, quick: bool, seed: int) -> TrainedDecoder:
  """The zoo's small Gemma-style decoder trained from scratch by the language-modelling
  protocol (quick: 64 evaluation and 32 validation sequences): AdamW, warm-up and cosine decay
  from 2e-3 over ``steps``, batch 32, the params of the lowest validation perplexity
  (evaluated every 100 steps, quick 20; stopped after 3 without a new best)."""
  protocol = lm.Protocol(evaluation_sequences=64 if quick else 512,
                         validation_sequences=32 if quick else 128, seed=seed)
  data = lm.splits(protocol)
  member = zoo.build("gemma", "small", seed=seed)
  assert member.config.vocab_size == protocol.vocab_size
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, min(100, steps // 10), steps)
  params, curve = lm.train_to_best(member.apply, member.params, data.train, data.validation,
                                   optax.adamw(schedule, weight_decay=0.01), steps,
                                   every=20 if quick else 100, patience=3, seed=seed)
  return TrainedDecoder(member, params, data, curve, protocol)


def input_spread(params: Any, moments: structure.Moments, s: structure.Structure,
                 sparsity: float = 0.5) -> dict[str, dict[str, float]]:
  """Per pruned kernel: ``max_over_median``, the largest input channel's RMS over the median
  channel's; ``cv``, the channels' RMS standard deviation over their mean; and
  ``wanda_vs_magnitude``, the share of the kernel's entries that Wanda's keep mask at
  ``sparsity`` and per-output magnitude's (Wanda with every channel's norm equal) disagree on.
  Near-equal channels leave Wanda little to add to magnitude."""
  equal = moments.replace(sq={p: jnp.broadcast_to(
      moments.count[p].reshape(np.shape(moments.count[p]) + (1,) * (
          v.ndim - np.ndim(moments.count[p]))), v.shape) for p, v in moments.sq.items()})
  _, wanda = structure.prune_kernels(params, moments, s, "wanda", sparsity=sparsity)
  _, magnitude = structure.prune_kernels(params, equal, s, "wanda", sparsity=sparsity)
  wanda, magnitude = (tree_utils.leaves_by_path(m) for m in (wanda, magnitude))
  out = {}
  for path, sq in moments.sq.items():
    if np.ndim(wanda[path]) == 0:  # left dense
      continue
    count = np.asarray(moments.count[path], np.float64)
    rms = np.sqrt(np.asarray(sq, np.float64).reshape(count.size, -1)
                  / np.maximum(count.reshape(-1, 1), 1.0))
    out[path] = {"max_over_median": float(np.mean(rms.max(1) / np.median(rms, 1))),
                 "cv": float(np.mean(rms.std(1) / rms.mean(1))),
                 "wanda_vs_magnitude": float(np.mean(np.asarray(wanda[path])
                                                     != np.asarray(magnitude[path])))}
  return out
