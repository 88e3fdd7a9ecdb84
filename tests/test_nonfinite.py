"""Non-finite gradients never cost a run: a skipped step applies no update at all, skipped
re-selections are retried, and the main job stops when its gradients stay non-finite."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from configs import default
from impjax.transforms import masking
from launch import train

STEPS = 12
SCHEDULE = ij.schedules.polynomial(0.0, 0.75, begin_step=2, end_step=8, frequency=2)


def _problem():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
                      "bias": jnp.zeros(8)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}}
  batches = [(jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
              jnp.asarray(rng.integers(0, 3, 16))) for _ in range(STEPS)]
  return params, batches


def _loss(params, batch):
  x, y = batch
  h = jax.nn.relu(x @ params["dense"]["kernel"] + params["dense"]["bias"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ params["head"]["kernel"], y).mean()


def _run(params, batches, poisoned=()):
  """Trains through ``prune`` under jit; gradients of the steps in ``poisoned`` are NaN."""
  tx = ij.transforms.prune(optax.adam(1e-2), SCHEDULE, "taylor")

  @jax.jit
  def step(params, state, batch, poison):
    grads = jax.grad(_loss)(params, batch)
    grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g), grads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for i, batch in enumerate(batches):
    params, state = step(params, state, batch, jnp.bool_(i in poisoned))
  return params, state


@pytest.mark.parametrize("poisoned", [(0,), (2, 4, 6, 8), (8,), (3, 8, 9), (11,)],
                         ids=["first", "every-update-step", "last-update-step", "mixed", "last"])
def test_poisoned_steps_equal_the_run_without_them(poisoned):
  params, batches = _problem()
  got_params, got = _run(params, batches + [batches[-1]] * len(poisoned),
                         poisoned=poisoned)
  clean = [b for i, b in enumerate(batches + [batches[-1]] * len(poisoned)) if i not in poisoned]
  want_params, want = _run(params, clean)
  assert int(got.skipped_nonfinite) == len(poisoned)
  assert int(got.count) == int(want.count) == STEPS
  assert int(got.nonfinite_streak) == 0  # the last step is finite in every case
  for a, b in zip(jax.tree.leaves((got_params, got.masks, got.inner_state, got.estimator_state)),
                  jax.tree.leaves((want_params, want.masks, want.inner_state,
                                   want.estimator_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(got_params))
  report = ij.transforms.sparsity_report(masking.unpack_masks(got.masks, got_params), got_params)
  assert report["global"] == pytest.approx(0.75, abs=1e-6)


def test_a_skipped_step_applies_no_update_and_keeps_the_state():
  params, batches = _problem()
  tx = ij.transforms.prune(optax.adam(1e-2), SCHEDULE, "taylor")
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update(jax.grad(_loss)(params, batches[0]), state, params)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.inf), jax.grad(_loss)(params, batches[1]))
  updates, after = update(bad, state, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  for name in ("count", "masks", "inner_state", "estimator_state"):
    for a, b in zip(jax.tree.leaves(getattr(after, name)), jax.tree.leaves(getattr(state, name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (int(after.skipped_nonfinite), int(after.nonfinite_streak)) == (1, 1)
  _, again = update(bad, after, params)
  assert (int(again.skipped_nonfinite), int(again.nonfinite_streak)) == (2, 2)
  _, recovered = update(jax.grad(_loss)(params, batches[1]), again, params)
  assert (int(recovered.skipped_nonfinite), int(recovered.nonfinite_streak)) == (2, 0)
  assert int(recovered.count) == 2


def _small_config():
  config = default.get_config("quick")
  config.steps, config.log_every, config.eval_every, config.checkpoint_every = 60, 10, 20, 30
  config.pruning.begin_step, config.pruning.end_step, config.pruning.frequency = 10, 40, 10
  config.progress = False
  return config


def _poison_training_images(monkeypatch, every):
  """The job's train split with one NaN pixel in every ``every``-th image (all when 1)."""
  load = train.data_lib.load_split

  def poisoned(name, split, data_dir=None):
    data = dict(load(name, split, data_dir))
    if split == "train":
      image = np.array(data["image"], np.float32)
      image[::every, 0, 0] = np.nan
      data["image"] = image
    return data
  monkeypatch.setattr(train.data_lib, "load_split", poisoned)


@pytest.mark.slow  # runs the main job
def test_job_with_nan_inputs_stops_without_a_summary(tmp_path, monkeypatch):
  _poison_training_images(monkeypatch, every=1)
  with pytest.raises(train.NonFiniteRun, match=r"config.max_nonfinite_steps=10"):
    train.train_and_evaluate(_small_config(), str(tmp_path))
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow  # runs the main job
def test_job_with_some_nan_inputs_skips_them_and_reaches_the_schedule(tmp_path, monkeypatch):
  _poison_training_images(monkeypatch, every=600)  # about one batch in five has a NaN pixel
  summary = train.train_and_evaluate(_small_config(), str(tmp_path))
  assert summary["skipped_nonfinite_steps"] > 0
  assert summary["final_sparsity"] == pytest.approx(0.9, abs=1e-6)
  assert summary["final_accuracy"] > 0.5


@pytest.mark.parametrize("rest", ["train", "frozen"])
def test_layer_sampling_skips_a_nonfinite_step_entirely(rest):
  rng = np.random.default_rng(0)
  params = {"blocks": {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
            "head": jnp.asarray(rng.normal(size=3), jnp.float32)}
  block = lambda layer, h: jnp.tanh(h * layer["w"])
  loss = lambda p, x, run: jnp.sum((run(x) * p["head"]) ** 2)
  sampling = ij.transforms.layer_sampling(loss, block, optax.adam(1e-2),
                                          ij.transforms.lisa(4, gamma=2, period=2), rest=rest)
  step = jax.jit(sampling.step)
  xs = [jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(5)]
  poisoned = xs[:2] + [xs[2].at[0].set(jnp.nan)] + xs[2:]

  def run(inputs):
    state = sampling.init(params, jax.random.key(0))
    for x in inputs:
      state, _ = step(state, x)
    return state

  got, want = run(poisoned), run(xs)
  assert int(got.skipped_nonfinite) == 1 and int(want.skipped_nonfinite) == 0
  assert int(got.count) == int(want.count) == 5
  def values(state):  # every array of the state but the skip counter, keys as their data
    rest = (state.params, state.opt_state, state.layer_opt_state, state.count,
            state.sampler_state.count, state.sampler_state.idx,
            jax.random.key_data(state.sampler_state.key))
    return [np.asarray(x) for x in jax.tree.leaves(rest)]

  for a, b in zip(values(got), values(want)):
    np.testing.assert_array_equal(a, b)
