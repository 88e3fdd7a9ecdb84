"""Language modeling on the project's English text: a BPE vocabulary, packed sequences, one
fixed protocol, and perplexity.

The text is :mod:`impjax.data.text`'s (Python's reference pages and standard-library
docstrings, read from the installed Python). The training text is both sources' calibration
split; the byte-level BPE vocabulary is trained on it alone (``tokenizers``), and cached on
first use. Sentences are encoded, each followed by ``[EOS]``, concatenated and cut into
sequences of ``seq_len`` tokens. :class:`Protocol` fixes every choice a figure depends on:
the sequence length, the vocabulary, the calibration sequences (a seeded draw from the training
sequences, the usual practice of calibrating on the training distribution), the evaluation
sequences (a seeded draw from the evaluation split of both sources, disjoint from the training
text) and the validation sequences (drawn from the evaluation split's other sequences), which
choose the training length (:func:`train_to_best`) without reading the evaluation sequences.

Example:
  >>> from impjax.data import language_modeling as lm
  >>> data = lm.splits(lm.Protocol(seq_len=32, vocab_size=300, calibration_sequences=4,
  ...                               evaluation_sequences=8))
  >>> data.calibration.shape, data.evaluation.shape, data.train.shape[1]
  ((4, 32), (8, 32), 32)
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tokenizers
from tokenizers import decoders
from tokenizers import models as bpe_models
from tokenizers import pre_tokenizers
from tokenizers import trainers
from tqdm import tqdm

from impjax.data import text

EOS = "[EOS]"
CACHE_DIR = os.environ.get("IMPJAX_LM_DIR", os.path.expanduser("~/.cache/impjax/language_modeling"))


class Protocol(NamedTuple):
  """Everything a perplexity figure depends on.

  Attributes:
    seq_len: tokens per sequence.
    vocab_size: the BPE vocabulary's size (``[EOS]`` included).
    calibration_sequences: training sequences drawn (seeded) for one-shot calibration.
    evaluation_sequences: evaluation sequences drawn (seeded) for perplexity (0: all of them).
    validation_sequences: held-out sequences drawn (seeded) from the evaluation split's rest,
      for choosing training steps (at most what the evaluation draw leaves).
    seed: the draws' seed.
  """
  seq_len: int = 64
  vocab_size: int = 512
  calibration_sequences: int = 128
  evaluation_sequences: int = 512
  validation_sequences: int = 0
  seed: int = 0


class Splits(NamedTuple):
  """Token sequences ``(n, seq_len)`` int32 of each split, and the tokenizer."""
  train: np.ndarray
  calibration: np.ndarray
  evaluation: np.ndarray
  tokenizer: Any
  validation: np.ndarray


def training_text() -> list[str]:
  """The calibration split of both text sources: what the BPE and the model learn from."""
  return [s for source in text.SOURCES for s in text.sentences("calibration", source)]


def evaluation_text() -> list[str]:
  """The evaluation split of both text sources (no sentence of the training text)."""
  return [s for source in text.SOURCES for s in text.sentences("evaluation", source)]


def tokenizer(vocab_size: int = 512, cache_dir: str | None = None) -> tokenizers.Tokenizer:
  """A byte-level BPE vocabulary of ``vocab_size`` tokens trained on :func:`training_text`,
  read from ``cache_dir`` when it was trained before."""
  cache_dir = cache_dir or CACHE_DIR
  path = os.path.join(cache_dir, f"bpe_{vocab_size}.json")
  if os.path.exists(path):
    return tokenizers.Tokenizer.from_file(path)
  tok = tokenizers.Tokenizer(bpe_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(training_text(), trainer)
  os.makedirs(cache_dir, exist_ok=True)
  partial = f"{path}.{os.getpid()}.tmp"
  tok.save(partial)
  os.replace(partial, path)  # several processes may train it at once; each file is whole
  return tok


def pack(tok: tokenizers.Tokenizer, sentences: list[str], seq_len: int) -> np.ndarray:
  """``sentences`` encoded, each followed by ``[EOS]``, concatenated and cut into
  ``(n, seq_len)`` int32 sequences (the last partial one dropped)."""
  eos = tok.token_to_id(EOS)
  ids = [i for enc in tok.encode_batch(sentences) for i in enc.ids + [eos]]
  n = len(ids) // seq_len
  return np.asarray(ids[:n * seq_len], np.int32).reshape(n, seq_len)


def splits(protocol: Protocol = Protocol(), cache_dir: str | None = None) -> Splits:
  """The protocol's :class:`Splits` (``ValueError`` when the evaluation split cannot give the
  validation sequences asked for)."""
  tok = tokenizer(protocol.vocab_size, cache_dir)
  train = pack(tok, training_text(), protocol.seq_len)
  held_out = pack(tok, evaluation_text(), protocol.seq_len)
  rng = np.random.default_rng(protocol.seed)
  pick = lambda n, among: np.sort(rng.choice(among, n, replace=False)) if n else among
  calibration = train[pick(protocol.calibration_sequences, np.arange(len(train)))]
  evaluation = pick(protocol.evaluation_sequences, np.arange(len(held_out)))
  rest = np.setdiff1d(np.arange(len(held_out)), evaluation)
  if protocol.validation_sequences > len(rest):
    raise ValueError(f"Protocol.validation_sequences={protocol.validation_sequences}: the "
                     f"evaluation split has {len(held_out)} sequences, {len(rest)} of them "
                     "not drawn for evaluation.")
  validation = rng.choice(rest, protocol.validation_sequences, replace=False)
  return Splits(train, calibration, held_out[evaluation], tok, held_out[np.sort(validation)])


def next_token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """Summed negative log-likelihood of every next token: ``logits[:, t]`` predicts
  ``ids[:, t + 1]``.

  Example:
    >>> ids = jnp.array([[1, 2, 3]])
    >>> round(float(next_token_nll(jnp.zeros((1, 3, 4)), ids)), 4)  # 2 tokens, log 4 each
    2.7726
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


@functools.partial(jax.jit, static_argnums=0)
def _batch_nll(apply, params, ids):
  """:func:`next_token_nll` of ``apply(params, ids)``, compiled once per ``apply``."""
  return next_token_nll(apply(params, ids), ids)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(apply, tx, params, opt_state, ids):
  """One optax step on the mean next-token loss, compiled once per ``(apply, tx)`` and shapes."""
  loss = lambda p: next_token_nll(apply(p, ids), ids) / (ids.shape[0] * (ids.shape[1] - 1))
  value, grads = jax.value_and_grad(loss)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, value


def perplexity(apply: Callable[..., jax.Array], params: Any, sequences: np.ndarray,
               batch_size: int = 32) -> float:
  """``exp`` of the mean next-token negative log-likelihood of ``apply(params, ids)`` (logits
  ``(batch, seq_len, vocab)``) over ``sequences``, in jitted batches (compiled once per
  ``apply`` and batch shape, so repeated calls on the same model reuse the program).

  Example:
    >>> apply = lambda p, ids: jnp.zeros(ids.shape + (8,))  # uniform over 8 tokens
    >>> round(perplexity(apply, None, np.zeros((3, 5), np.int32), batch_size=2), 4)
    8.0
  """
  total = sum(float(_batch_nll(apply, params, jnp.asarray(sequences[i:i + batch_size])))
              for i in range(0, len(sequences), batch_size))
  return float(np.exp(total / (len(sequences) * (sequences.shape[1] - 1))))


def train(apply: Callable[..., jax.Array], params: Any, sequences: np.ndarray, tx: Any,
          steps: int, batch_size: int = 32, seed: int = 0, opt_state: Any = None,
          progress: bool = True) -> tuple[Any, Any]:
  """``(params, opt_state)`` after ``steps`` of next-token training with the optax ``tx`` on
  batches drawn (seeded, reshuffled every epoch) from ``sequences``. The step is compiled once
  per ``(apply, tx)`` and batch shape: call again with the same ``apply`` and ``tx`` objects
  to continue without recompiling."""
  opt_state = tx.init(params) if opt_state is None else opt_state
  rng, order = np.random.default_rng(seed), np.zeros(0, np.int64)
  bar = tqdm(range(steps), desc="train", disable=not progress)
  for i in bar:
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(sequences))])
    batch, order = order[:batch_size], order[batch_size:]
    params, opt_state, value = _train_step(apply, tx, params, opt_state,
                                           jnp.asarray(sequences[batch]))
    if i % 50 == 0:
      bar.set_postfix(loss=f"{float(value):.3f}")
  return params, opt_state


def train_to_best(apply: Callable[..., jax.Array], params: Any, sequences: np.ndarray,
                  validation: np.ndarray, tx: Any, steps: int, every: int = 100,
                  patience: int = 2, batch_size: int = 32, seed: int = 0,
                  progress: bool = True) -> tuple[Any, list[tuple[int, float]]]:
  """Early stopping on held-out sequences: :func:`train` ``every`` steps at a time (the optimizer
  state carried over, so a schedule runs on) up to ``steps``, the :func:`perplexity` of
  ``validation`` after each; stops after ``patience`` evaluations without a new best.

  Returns:
    ``(the params of the lowest validation perplexity, [(step, validation perplexity)]``
    from step 0 on).

  Example:
    >>> import optax
    >>> apply = lambda p, ids: jnp.broadcast_to(p, ids.shape + p.shape)  # one logit vector
    >>> seqs = np.zeros((8, 4), np.int32)  # always token 0
    >>> best, curve = train_to_best(apply, jnp.zeros(3), seqs, seqs, optax.sgd(1.0), 20,
    ...                             every=10, progress=False)
    >>> [(step, round(p, 2)) for step, p in curve]  # uniform over 3 tokens at first
    [(0, 3.0), (10, 1.07), (20, 1.03)]
  """
  curve = [(0, perplexity(apply, params, validation, batch_size))]
  best, best_at, current, opt_state = params, 0, params, None
  while curve[-1][0] < steps and len(curve) - 1 - best_at < patience:
    chunk = min(every, steps - curve[-1][0])
    current, opt_state = train(apply, current, sequences, tx, chunk, batch_size,
                               seed + curve[-1][0], opt_state, progress)
    curve.append((curve[-1][0] + chunk, perplexity(apply, current, validation, batch_size)))
    if curve[-1][1] < curve[best_at][1]:
      best, best_at = current, len(curve) - 1
  return best, curve
