"""The language-modeling protocol: a cached BPE vocabulary of the training text only, packed
sequences, disjoint evaluation text, perplexity against its formula, and training that lowers
it on a Gemma-style decoder, which then prunes one-shot and recovers with its masks held."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from impjax import structure
from impjax import transforms
from impjax import tree_utils
from impjax.data import language_modeling as lm
from impjax.models import gemma
from impjax.models import zoo

PROTOCOL = lm.Protocol(seq_len=24, vocab_size=300, calibration_sequences=8,
                       evaluation_sequences=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return lm.splits(PROTOCOL, cache_dir=str(tmp_path_factory.mktemp("lm")))


def test_the_vocabulary_is_the_training_texts_cached_and_packs_sentences(data, tmp_path):
  assert data.tokenizer.get_vocab_size() == 300
  assert not set(lm.training_text()) & set(lm.evaluation_text())
  again = lm.splits(PROTOCOL, cache_dir=str(tmp_path))  # trained anew: the same vocabulary
  np.testing.assert_array_equal(again.train, data.train)
  np.testing.assert_array_equal(again.evaluation, data.evaluation)
  eos = data.tokenizer.token_to_id(lm.EOS)
  first = lm.training_text()[0]
  ids = data.tokenizer.encode(first).ids
  np.testing.assert_array_equal(data.train.reshape(-1)[:len(ids) + 1], ids + [eos])
  assert data.tokenizer.decode(ids).strip() == first
  # The calibration sequences are training sequences; none is an evaluation sequence.
  train_rows = {tuple(r) for r in data.train}
  assert all(tuple(r) in train_rows for r in data.calibration)


def test_validation_is_held_out_from_evaluation_and_training_and_leaves_evaluation_as_it_was(
    data, tmp_path):
  asked = PROTOCOL._replace(validation_sequences=16)
  more = lm.splits(asked, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(more.evaluation, data.evaluation)  # the same draws as without
  np.testing.assert_array_equal(more.calibration, data.calibration)
  assert more.validation.shape == (16, PROTOCOL.seq_len) and data.validation.shape[0] == 0
  every = lm.splits(PROTOCOL._replace(evaluation_sequences=0), cache_dir=str(tmp_path))
  positions = {tuple(r): i for i, r in enumerate(every.evaluation)}  # rows of the split
  held_out = lambda rows: {positions[tuple(r)] for r in rows}
  assert len(held_out(more.validation)) == 16
  assert not held_out(more.validation) & held_out(more.evaluation)
  assert not {tuple(r) for r in more.validation} & {tuple(r) for r in more.train}
  too_many = len(every.evaluation) - PROTOCOL.evaluation_sequences + 1
  with pytest.raises(ValueError, match="validation_sequences"):
    lm.splits(PROTOCOL._replace(validation_sequences=too_many), cache_dir=str(tmp_path))


def test_training_stops_at_the_best_validation_perplexity_after_patience_runs_out():
  seqs = np.zeros((8, 4), np.int32)  # always token 0: perplexity falls with p[0] - p[1:]
  apply = lambda p, ids: jnp.broadcast_to(p, ids.shape + p.shape)
  other = np.ones((8, 4), np.int32)  # validation on token 1: it rises as training goes on
  tx = optax.sgd(0.5)
  best, curve = lm.train_to_best(apply, jnp.zeros(3), seqs, other, tx, 100, every=10,
                                 patience=2, progress=False)
  assert [s for s, _ in curve] == [0, 10, 20]  # two evaluations without a new best: stop
  assert curve[1][1] > curve[0][1] and curve[2][1] > curve[0][1]
  np.testing.assert_array_equal(best, jnp.zeros(3))  # the start was best
  best, curve = lm.train_to_best(apply, jnp.zeros(3), seqs, seqs, tx, 25, every=10,
                                 progress=False)
  assert [s for s, _ in curve] == [0, 10, 20, 25]  # always improving: every step, the rest last
  want, state = lm.train(apply, jnp.zeros(3), seqs, tx, 10, seed=0, progress=False)
  for start, n in ((10, 10), (20, 5)):
    want, state = lm.train(apply, want, seqs, tx, n, seed=start, opt_state=state, progress=False)
  np.testing.assert_allclose(best, want, rtol=1e-6)
  assert curve[-1][1] == pytest.approx(lm.perplexity(apply, want, seqs), rel=1e-6)


def test_training_and_perplexity_compile_once_per_model_and_optimizer():
  traces = []

  def apply(p, ids):
    traces.append(ids.shape)  # runs only while jax traces
    return jnp.broadcast_to(p, ids.shape + p.shape)

  seqs, tx = np.zeros((8, 4), np.int32), optax.sgd(0.5)
  params, state = lm.train(apply, jnp.zeros(3), seqs, tx, 3, batch_size=4, progress=False)
  assert len(traces) == 1
  params, state = lm.train(apply, params, seqs, tx, 3, batch_size=4, opt_state=state,
                           progress=False)
  assert len(traces) == 1  # the same (apply, tx): the compiled step is reused
  ppl = [lm.perplexity(apply, params, seqs, batch_size=4) for _ in range(2)]
  assert len(traces) == 2 and ppl[0] == ppl[1]
  lm.train(apply, params, seqs, optax.sgd(0.1), 1, batch_size=4, progress=False)
  assert len(traces) == 3  # a new optimizer is a new program
  eager = np.exp(-np.mean(np.asarray(jax.nn.log_softmax(params))[0]))  # always token 0
  assert ppl[0] == pytest.approx(float(eager), rel=1e-6)


def test_perplexity_equals_its_formula():
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.standard_normal((300, 300)), jnp.float32)
  apply = lambda p, ids: p[ids]  # a bigram model: logits from the current token
  seqs = rng.integers(0, 300, (5, 7)).astype(np.int32)
  logits = np.asarray(table, np.float64)[seqs]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp[:, :-1], seqs[:, 1:, None], -1).mean()
  assert lm.perplexity(apply, table, seqs, batch_size=2) == pytest.approx(np.exp(nll), rel=1e-5)


def test_a_decoder_trains_prunes_one_shot_and_recovers_with_masks_held(data):
  config = gemma.GemmaConfig(vocab_size=300, width=32, depth=2, num_heads=4, num_kv_heads=2,
                             head_dim=8, mlp_dim=64)
  member = zoo.from_config("gemma", config, (2, PROTOCOL.seq_len))
  start = lm.perplexity(member.apply, member.params, data.evaluation)
  params, _ = lm.train(member.apply, member.params, data.train, optax.adam(3e-3), 60,
                       batch_size=16, progress=False)
  trained = lm.perplexity(member.apply, params, data.evaluation)
  assert trained < 0.5 * start
  s = structure.discover(member.apply, params, *member.inputs)
  pruned, masks = structure.prune_sequential(member.apply, params, s, [(data.calibration,)],
                                             "sparsegpt", sparsity=0.5, progress=False)
  one_shot = lm.perplexity(member.apply, pruned, data.evaluation)
  recovered, _ = lm.train(member.apply, pruned, data.train,
                          transforms.hold_masks(optax.adam(1e-3), masks), 20, batch_size=16,
                          progress=False)
  for path, keep in tree_utils.leaves_by_path(masks).items():
    w = np.asarray(tree_utils.leaves_by_path(recovered)[path])
    assert (w[~np.broadcast_to(np.asarray(keep), w.shape)] == 0).all(), path
  assert lm.perplexity(member.apply, recovered, data.evaluation) < one_shot
  assert jax.tree.structure(recovered) == jax.tree.structure(params)
