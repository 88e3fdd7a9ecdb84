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
