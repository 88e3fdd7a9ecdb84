"""Layer sampling: the sampled runner against the full stack and its gradient, no weight
gradient for frozen layers (in the backward jaxpr), LISA and IST samplers, the train step
against full fine-tuning, frozen layers untouched, optimizer state only for the active layers,
no recompilation across switches, and clear errors."""


import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from impjax import metrics
from impjax.transforms import layer_stack
from impjax.transforms import layer_samplers
from tests.helpers import build

DEPTH = 6


@pytest.fixture(scope="module")
def setup():
  graphdef, params = build(ij.models.ResidualMLP, 10, 8, 12, DEPTH, 3)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 10)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 3, size=16), jnp.int32)}

  def loss(params, batch, run=None):
    logits = nnx.merge(graphdef, params)(batch["image"], run=run)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return params, ij.models.block_fn(nnx.merge(graphdef, params)), loss, batch


@pytest.mark.slow  # over ~10 s
def test_run_sampled_equals_full_stack_and_its_gradient(setup):
  params, block, _, batch = setup
  layers = params["blocks"]
  idx = jnp.array([1, 4])
  active = jax.tree.map(lambda a: a * 1.5, layer_stack.gather(layers, idx))
  h = jnp.asarray(np.random.default_rng(1).normal(size=(5, 8)), jnp.float32)
  sampled = lambda a, h: jnp.sum(layer_stack.run_sampled(block, a, layers, idx, h) ** 2)
  full = jax.jit(jax.value_and_grad(
      lambda stack, h: jnp.sum(ij.transforms.run_layers(block, stack, h) ** 2), argnums=(0, 1)))
  value, (g_stack, g_h_full) = full(layer_stack.scatter(layers, active, idx), h)
  eager_value, (g_active, g_h) = jax.value_and_grad(sampled, argnums=(0, 1))(active, h)
  np.testing.assert_allclose(eager_value, value, rtol=1e-6)
  # float32 gradients of magnitude ~40: an entry near zero after cancellation differs by ~3e-6
  chex.assert_trees_all_close(g_active, layer_stack.gather(g_stack, idx), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_h, g_h_full, rtol=1e-5, atol=1e-6)
  jitted = jax.jit(jax.grad(sampled, argnums=(0, 1)))(active, h)
  chex.assert_trees_all_close(jitted, (g_active, g_h), rtol=1e-5, atol=1e-5)


def test_frozen_branch_computes_no_weight_gradient(setup):
  """The transposed ``cond``: the frozen branch has the two ``dL/dh`` matmuls of a block
  (``up``, ``down``), the trained branch adds the two weight-gradient matmuls."""
  params, block, _, _ = setup
  idx = jnp.array([2, 3])
  active = layer_stack.gather(params["blocks"], idx)
  f = lambda a, h: jnp.sum(layer_stack.run_sampled(block, a, params["blocks"], idx, h))
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(active, jnp.ones((5, 8)))

  def conds(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "cond":
        yield [sum(e.primitive.name == "dot_general" for e in b.jaxpr.eqns)
               for b in eqn.params["branches"]]
      for value in eqn.params.values():
        if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
          yield from conds(value.jaxpr)
  found = list(conds(jaxpr.jaxpr))  # one cond per layer forward, one per layer backward
  assert found == [[2, 2]] * DEPTH + [[2, 4]] * DEPTH, found


def test_lisa_resamples_every_period_uniformly_and_reproducibly():
  sampler = ij.transforms.lisa(num_layers=8, gamma=2, period=5)
  state = sampler.init(jax.random.key(0))
  update = jax.jit(lambda s: sampler.update(s, None))
  history = [np.asarray(state.idx)]
  for _ in range(2000):
    state = update(state)
    history.append(np.asarray(state.idx))
  history = np.array(history)
  for t in range(1, len(history)):
    if t % 5:
      np.testing.assert_array_equal(history[t], history[t - 1])
  periods = history[::5]
  assert np.all(periods[:, 0] < periods[:, 1])  # distinct and sorted
  counts = np.bincount(periods.ravel(), minlength=8) / periods.size
  np.testing.assert_allclose(counts, np.full(8, 1 / 8), atol=0.03)
  again = sampler.init(jax.random.key(0))
  np.testing.assert_array_equal(again.idx, history[0])


def test_ist_score_update_matches_formula():
  scores = jnp.array([0.0, 1.0, -2.0, 0.5])
  damped = jnp.array([[True, True, False, False], [False, True, True, False],
                      [True, False, False, True]])
  losses = jnp.array([0.3, 1.2, 0.7])
  r = np.exp(-np.asarray(losses, np.float64))
  r -= r.mean()
  s = np.asarray(scores, np.float64)
  sig = 1 / (1 + np.exp(-s))
  expected = s + 10.0 * (r @ np.asarray(damped, np.float64)) * sig * (1 - sig)
  np.testing.assert_allclose(layer_samplers.ist_scores(scores, damped, losses), expected, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(layer_samplers.ist_scores)(scores, damped, losses), expected,
                             rtol=1e-5)


def test_ist_learns_which_layer_matters():
  """Damping layer 2 raises the loss; the others do not: layer 2's score falls (unsafe to
  suppress) and it becomes the most often sampled layer."""
  sampler = ij.transforms.ist(num_layers=6, fraction=0.34, every=2)
  evaluate = lambda keep: 3.0 * (1.0 - keep[2].astype(jnp.float32))

  def step(state, _):
    state = sampler.update(state, evaluate)
    return state, state.idx
  state, idx = jax.jit(lambda s: jax.lax.scan(step, s, None, length=400))(
      sampler.init(jax.random.key(0)))
  scores = np.asarray(state.scores)
  assert scores[2] < np.min(np.delete(scores, 2)) - 1.0, scores
  late = np.bincount(np.asarray(idx[200:]).ravel(), minlength=6)
  assert np.argmax(late) == 2, late


@pytest.mark.slow
@pytest.mark.parametrize("rest", ["train", "frozen"])
def test_every_layer_active_equals_full_fine_tuning(setup, rest):
  """Every layer active equals full fine-tuning; with ``rest="frozen"``, full fine-tuning with
  everything outside the stack frozen, the rest then stays bit for bit with no optimizer state."""
  params, block, loss, batch = setup
  tx = optax.adam(1e-2)
  ls = ij.transforms.layer_sampling(loss, block, tx,
                                    ij.transforms.lisa(DEPTH, gamma=DEPTH, period=1000), rest=rest)
  state = ls.init(params, jax.random.key(0))
  reference_tx = tx
  if rest == "frozen":
    assert state.opt_state == ()
    labels = {k: "train" if k == "blocks" else "frozen" for k in params}
    reference_tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  full, opt_state = params, reference_tx.init(params)

  @jax.jit
  def full_step(p, opt_state):
    value, grads = jax.value_and_grad(loss)(p, batch)
    updates, opt_state = reference_tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, value
  chex.clear_trace_counter()  # the counter is keyed by call site, shared by both parameters
  step = jax.jit(chex.assert_max_traces(ls.step, n=1))
  for _ in range(3):
    state, metrics = step(state, batch)
    full, opt_state, value = full_step(full, opt_state)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
  chex.assert_trees_all_close(state.params, full, rtol=1e-4, atol=1e-6)
  outside = lambda tree: {k: v for k, v in tree.items() if k != "blocks"}
  if rest == "frozen":
    chex.assert_trees_all_equal(outside(state.params), outside(params))
  else:
    assert not np.allclose(state.params["head"]["kernel"], params["head"]["kernel"])
  assert not np.allclose(state.params["blocks"]["up"]["kernel"], params["blocks"]["up"]["kernel"])


def test_lisa_step_trains_only_active_layers_and_never_retraces(setup):
  params, block, loss, batch = setup
  gamma, period = 2, 3
  ls = ij.transforms.layer_sampling(loss, block, optax.adam(1e-2),
                                    ij.transforms.lisa(DEPTH, gamma=gamma, period=period))
  state = ls.init(params, jax.random.key(1))
  step = jax.jit(chex.assert_max_traces(ls.step, n=1))
  chex.assert_tree_shape_prefix(state.layer_opt_state[0].mu, (gamma,))
  active_sets = []
  for t in range(4 * period):
    before, idx = state.params, np.asarray(state.sampler_state.idx)
    state, _ = step(state, batch)
    after = state.params
    moved = np.abs(np.asarray(after["blocks"]["up"]["kernel"])
                   - np.asarray(before["blocks"]["up"]["kernel"])).reshape(DEPTH, -1).sum(1)
    np.testing.assert_array_equal(np.flatnonzero(moved), idx)  # exactly the active layers
    assert not np.allclose(after["embed"]["kernel"], before["embed"]["kernel"])
    assert not np.allclose(after["head"]["kernel"], before["head"]["kernel"])
    if (t + 1) % period == 0:
      active_sets.append(tuple(np.asarray(state.sampler_state.idx)))
      inner = state.layer_opt_state[0]
      assert np.all(np.asarray(inner.count) == 0)  # fresh state for the new active layers
      chex.assert_trees_all_equal(inner.mu, jax.tree.map(jnp.zeros_like, inner.mu))
  assert len(set(active_sets)) > 1


@pytest.mark.slow
def test_all_mode_keeps_every_layers_state_and_ist_learns_in_the_step(setup):
  params, block, loss, batch = setup
  ls = ij.transforms.layer_sampling(loss, block, optax.adam(1e-2),
                                    ij.transforms.ist(DEPTH, fraction=0.17, every=3),
                                    optimizer_state="all")
  state = ls.init(params, jax.random.key(2))
  step = jax.jit(chex.assert_max_traces(ls.step, n=1))
  chex.assert_tree_shape_prefix(state.layer_opt_state[0].mu, (DEPTH,))
  trained = np.zeros(DEPTH, int)
  for t in range(8):
    idx = int(state.sampler_state.idx[0])
    before = np.asarray(state.layer_opt_state[0].mu["up"]["kernel"])
    state, _ = step(state, batch)
    after = np.asarray(state.layer_opt_state[0].mu["up"]["kernel"])
    others = np.arange(DEPTH) != idx
    np.testing.assert_array_equal(after[others], before[others])  # kept, not reset
    assert not np.allclose(after[idx], before[idx])
    trained[idx] += 1
    scores = np.asarray(state.sampler_state.scores)
    assert np.any(scores != 0.0) == (t >= 2)  # the first damping trials run at step 3
  np.testing.assert_array_equal(np.asarray(state.layer_opt_state[0].count), trained)
  assert np.count_nonzero(trained) > 1


def test_bad_input_is_named(setup):
  params, block, loss, _ = setup
  with pytest.raises(ValueError, match="optimizer_state"):
    ij.transforms.layer_sampling(loss, block, optax.sgd(0.1), ij.transforms.lisa(DEPTH),
                                 optimizer_state="some")
  with pytest.raises(ValueError, match="rest"):
    ij.transforms.layer_sampling(loss, block, optax.sgd(0.1), ij.transforms.lisa(DEPTH),
                                 rest="some")
  with pytest.raises(ValueError, match="gamma"):
    ij.transforms.lisa(4, gamma=5)
  with pytest.raises(ValueError, match="idx"):
    layer_stack.run_sampled(block, layer_stack.gather(params["blocks"], jnp.array([0])),
                              params["blocks"], jnp.array([0, 1]), jnp.ones((2, 8)))
  ls = ij.transforms.layer_sampling(loss, block, optax.sgd(0.1), ij.transforms.lisa(DEPTH),
                                    layers="encoder/layers")
  with pytest.raises(ValueError, match="encoder/layers"):
    ls.init(params, jax.random.key(0))


# ----------------------------------------------------------------------- MiniLM (nnx.List layers)
MINILM_DEPTH = 2


@pytest.fixture(scope="module")
def minilm_setup():
  """A tiny random MiniLM, a contrastive loss through ``run((h, mask))``, its hand-written
  reference through MiniLM's own encoder loop, and a batch: 4 queries, then 4 passages."""
  from impjax.models import minilm  # pylint: disable=g-import-not-at-top
  config = minilm.MiniLMConfig(vocab_size=40, hidden_size=32, num_heads=(2,) * MINILM_DEPTH,
                               head_dim=16, intermediate_sizes=(64,) * MINILM_DEPTH,
                               max_position=8)
  graphdef, pure = build(minilm.MiniLM, config)
  shape = nnx.eval_shape(lambda: minilm.MiniLM(config, rngs=nnx.Rngs(0)))
  embed_def, layer_def = nnx.graphdef(shape.embeddings), nnx.graphdef(shape.layers[0])
  rng = np.random.default_rng(0)
  batch = {"ids": rng.integers(1, 40, (8, 8)),
           "mask": (np.arange(8) < rng.integers(2, 9, (8, 1))).astype(np.int32)}

  def loss(p, b, run):
    states = run((nnx.merge(embed_def, p["embeddings"])(b["ids"]), b["mask"]))[0]
    emb = minilm.normalize(minilm.mean_pool(states, b["mask"]))
    return metrics.contrastive_loss(emb[:4], emb[4:])

  def reference_loss(pure, b):
    emb = nnx.merge(graphdef, pure).encode(b["ids"], b["mask"])
    return metrics.contrastive_loss(emb[:4], emb[4:])

  block = lambda layer, h: (nnx.merge(layer_def, layer)(*h), h[1])
  return pure, loss, block, jax.jit(jax.value_and_grad(reference_loss)), batch


def test_stack_layers_round_trips_and_names_bad_layers():
  layers = {0: {"w": jnp.ones((2, 3))}, 1: {"w": jnp.zeros((2, 3))}}
  stack = ij.transforms.stack_layers(layers)
  chex.assert_trees_all_equal(ij.transforms.unstack_layers(stack), layers)
  chex.assert_trees_all_equal(ij.transforms.stack_layers([layers[0], layers[1]]),
                              stack)
  with pytest.raises(ValueError, match="layer 1 leaf 'w'"):
    ij.transforms.stack_layers([layers[0], {"w": jnp.ones(3)}])
  with pytest.raises(ValueError, match="keys 0..1"):
    ij.transforms.stack_layers({0: layers[0], 2: layers[1]})


@pytest.mark.slow
def test_lisa_on_minilm_matches_hand_written_adamw_on_the_full_gradient(minilm_setup):
  """LISA on a MiniLM (layers of an ``nnx.List``, stacked): one step equals AdamW applied by
  hand to the embeddings and the sampled layer with the gradient of MiniLM's own forward
  (Adam's first moment is ``0.1 * g``, so the gradient itself is checked); the unsampled
  layer and its optimizer state do not change, bit for bit, while LISA resamples. Under
  ``jit`` only: an eager step of the unrolled ``cond``s takes ~30 s (the sampled runner is
  tested eager on the residual MLP above).
  The key bias is left out of the value checks: its exact gradient is 0 (softmax is
  shift-invariant), so both sides hold rounding noise, which Adam scales up to +-lr."""
  pure, loss, block, reference, batch = minilm_setup
  stack = ij.transforms.stack_layers(pure["layers"])
  params = {"embeddings": pure["embeddings"], "layers": stack}
  tx = optax.adamw(1e-3, weight_decay=0.01)
  ls = ij.transforms.layer_sampling(loss, block, tx, ij.transforms.lisa(MINILM_DEPTH, 1, 1),
                                    layers="layers", optimizer_state="all")
  state = ls.init(params, jax.random.key(0))  # samples layers 0, 1, 1, 0
  idx = np.asarray(state.sampler_state.idx)
  value, g = reference(pure, batch)
  g_layers = layer_stack.gather(ij.transforms.stack_layers(g["layers"]), idx)
  fresh = lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0])
  expected_active = jax.vmap(fresh)(layer_stack.gather(stack, idx), g_layers)
  expected_embeddings = fresh(pure["embeddings"], g["embeddings"])
  no_key_bias = lambda layers: {**layers, "key": {"kernel": layers["key"]["kernel"]}}
  step = jax.jit(ls.step)
  new, metrics = step(state, batch)
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
  mu = layer_stack.gather(new.layer_opt_state[0].mu, idx)
  chex.assert_trees_all_close(no_key_bias(mu),
                              no_key_bias(jax.tree.map(lambda x: 0.1 * x, g_layers)),
                              rtol=1e-4, atol=1e-8)
  chex.assert_trees_all_close(no_key_bias(layer_stack.gather(new.params["layers"], idx)),
                              no_key_bias(expected_active), rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new.params["embeddings"], expected_embeddings,
                              rtol=1e-5, atol=1e-6)
  sampled = []
  for _ in range(4):  # LISA resamples every step here
    idx = np.asarray(state.sampler_state.idx)
    frozen = np.setdiff1d(np.arange(MINILM_DEPTH), idx)
    new, _ = step(state, batch)
    for before, after in ((state.params["layers"], new.params["layers"]),
                          (state.layer_opt_state, new.layer_opt_state)):
      chex.assert_trees_all_equal(layer_stack.gather(after, frozen),
                                  layer_stack.gather(before, frozen))
    moved = layer_stack.gather(new.params["layers"]["query"]["kernel"], idx)
    assert np.all(np.any(moved != layer_stack.gather(state.params["layers"]["query"]["kernel"],
                                                       idx), axis=(1, 2)))
    sampled.append(int(idx[0]))
    state = new
  assert len(set(sampled)) == MINILM_DEPTH, sampled  # both layers took a turn
