"""Activation capture and streaming calibration statistics: one batch = many = across devices."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impjax import scores
from impjax.flax import capture
from impjax.models import minilm

CONFIG = minilm.MiniLMConfig(vocab_size=40, hidden_size=8, num_heads=(2,), head_dim=4,
                             intermediate_sizes=(12,), max_position=8)


def model_and_data(seed=0):
  model = minilm.MiniLM(CONFIG, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 40, (8, 8)).astype(np.int32)
  lengths = rng.integers(2, 9, 8)
  mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
  return model, ids * mask, mask


def test_tap_is_a_no_op_outside_capture():
  model, ids, mask = model_and_data()
  before = nnx.state(model)
  model(ids, mask)
  after = nnx.state(model)
  assert jax.tree.structure(before) == jax.tree.structure(after)
  assert not nnx.state(model, nnx.Intermediate)


def test_intermediates_hold_the_layer_values():
  model, ids, mask = model_and_data()
  out, acts = capture.intermediates(lambda m: m(ids, mask), model)
  layer = model.layers[0]
  x = model.embeddings(ids)
  np.testing.assert_allclose(acts["layers/0/inputs"], x, atol=1e-6)
  np.testing.assert_allclose(acts["layers/0/query/inputs"], x, atol=1e-6)
  np.testing.assert_allclose(acts["layers/0/outputs"], out, atol=1e-6)
  # attention probabilities by hand from the query and key projections
  q = np.asarray(layer.query(x)).reshape(8, 8, 2, 4)
  k = np.asarray(layer.key(x)).reshape(8, 8, 2, 4)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
  logits = np.where(mask[:, None, None, :] > 0, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(acts["layers/0/attention_probs"], probs, atol=1e-6)
  hidden = jax.nn.gelu(layer.intermediate(acts["layers/0/intermediate/inputs"]),
                       approximate=False)
  np.testing.assert_allclose(acts["layers/0/output/inputs"], hidden, atol=1e-6)


def observe(state, batch, graphdef):
  ids, mask = batch
  _, acts = capture.intermediates(lambda m: m(ids, mask), nnx.merge(graphdef, state))
  return {"hidden": scores.token_sums(acts["layers/0/output/inputs"], mask),
          "gram": scores.token_gram(acts["layers/0/query/inputs"], mask),
          "influence": scores.block_influence_sums(acts["layers/0/inputs"],
                                                   acts["layers/0/outputs"], mask)}


class Observer:
  """Hashable observer of one graph (capture.accumulate_sums takes it as a static argument)."""

  def __init__(self, graphdef):
    self.graphdef = graphdef

  def __call__(self, state, batch):
    return observe(state, batch, self.graphdef)

  def __hash__(self):
    return hash(self.graphdef)

  def __eq__(self, other):
    return isinstance(other, Observer) and other.graphdef == self.graphdef


@pytest.mark.slow  # over ~10 s
def test_statistics_equal_in_one_batch_many_batches_and_across_devices():
  model, ids, mask = model_and_data()
  graphdef, state = nnx.split(model)
  obs = Observer(graphdef)
  one = scores.means(capture.accumulate_sums(obs, state, [(ids, mask)], progress=False))
  many = scores.means(capture.accumulate_sums(
      obs, state, [(ids[i:i + 3], mask[i:i + 3]) for i in range(0, 8, 3)], progress=False))
  estimator = capture.SUMS

  def device(batch):  # one device's share, averaged over the mapped axis
    sums = obs(state, batch)
    return estimator.update(estimator.init(sums), None, sums, axis_name="devices")[0]

  split = jax.vmap(device, axis_name="devices")((ids.reshape(4, 2, 8), mask.reshape(4, 2, 8)))
  across = scores.means(jax.tree.map(lambda x: x[0], split))
  pmapped = scores.means(jax.tree.map(lambda x: x[0], jax.pmap(device, axis_name="devices")(
      (ids[None], mask[None]))))
  for other in (many, across, pmapped):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, other)


def test_statistics_against_numpy():
  model, ids, mask = model_and_data()
  _, acts = capture.intermediates(lambda m: m(ids, mask), model)
  graphdef, state = nnx.split(model)
  got = scores.means(capture.accumulate_sums(Observer(graphdef), state, [(ids, mask)], progress=False))
  real = mask.astype(bool)
  hidden = np.asarray(acts["layers/0/output/inputs"])[real]
  np.testing.assert_allclose(got["hidden"]["sq"], (hidden ** 2).mean(0), rtol=1e-5)
  np.testing.assert_allclose(got["hidden"]["nonpos"], (hidden <= 0).mean(0), rtol=1e-6)
  x = np.asarray(acts["layers/0/query/inputs"])[real]
  np.testing.assert_allclose(got["gram"]["gram"], x.T @ x / len(x), rtol=1e-5, atol=1e-6)


def test_calibrate_needs_batches():
  with pytest.raises(ValueError, match="no batches"):
    capture.accumulate_sums(lambda v, b: {"count": jnp.float32(1)}, None, [], progress=False)
