"""The criterion registry: a criterion added in one place reaches every consumer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import impjax as ij
from configs import default
from launch import train


@pytest.fixture
def toy():
  """A toy criterion, registered in this one place: the summed |gradient| of each weight."""
  @ij.scores.register_criterion("toy_abs_grad_sum")
  def build(options):
    del options
    return ij.scores.Criterion(
        "toy_abs_grad_sum", lambda params, grads: jax.tree.map(jnp.abs, grads),
        lambda params, estimate: estimate, ij.estimators.sum)
  yield "toy_abs_grad_sum"
  del ij.scores.CRITERIA["toy_abs_grad_sum"]


PARAMS = {"d": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2), "bias": jnp.zeros(2)}}
# Gradients whose |g| order is the reverse of |w|: the toy and magnitude disagree everywhere.
GRADS = {"d": {"kernel": -jnp.arange(8.0, 0.0, -1.0).reshape(4, 2), "bias": jnp.ones(2)}}


def test_toy_criterion_drives_prune(toy):
  tx = ij.transforms.prune(optax.sgd(0.0), ij.schedules.one_shot(0.5, 1), toy)
  state = tx.init(PARAMS)
  for _ in range(2):  # the estimate sums two steps; masks are chosen on the second
    _, state = tx.update(GRADS, state, PARAMS)
  kept = np.asarray(ij.transforms.current_masks(state, PARAMS)["d"]["kernel"]).reshape(-1)
  by_hand = np.abs(np.asarray(GRADS["d"]["kernel"])).reshape(-1) >= 5.0  # the 4 largest |g|
  np.testing.assert_array_equal(kept, by_hand)
  assert type(state.estimator_state) is ij.estimators.SumState


def test_toy_criterion_drives_importance_order_and_calibration(toy):
  order = ij.transforms.importance_order(toy, every=1)
  ranks, _ = order.update(order.init(PARAMS), PARAMS, GRADS)
  # unit scores: |g| summed over each column and its bias: [8+6+4+2+1, 7+5+3+1+1]
  assert ranks["d"].tolist() == [0, 1]
  imp = ij.estimators.calibrated_importance(
      ij.scores.criterion(toy), PARAMS, [None, None], lambda p, b: GRADS, progress=False)
  np.testing.assert_allclose(imp["d"]["kernel"], np.abs(np.asarray(GRADS["d"]["kernel"])))


def test_toy_criterion_runs_in_the_main_job_config(toy):
  config = default.get_config("quick")
  config.pruning.criterion = toy
  tx = train.build_optimizer(config)
  assert type(tx.init(PARAMS).estimator_state) is ij.estimators.SumState


def test_registry_refuses_a_second_entry_and_names_unknown_criteria(toy):
  with pytest.raises(ValueError, match="already registered"):
    ij.scores.register_criterion(toy)
  with pytest.raises(ValueError, match=r"Unknown criterion 'snip'.*toy_abs_grad_sum"):
    ij.scores.criterion("snip")
