"""Bad input to the library is refused early, naming the leaf, rule or field; what is not
checked under jit does what its docstring says."""

import jax
import jax.numpy as jnp
import optax
import pytest

import impjax as ij

PARAMS = {"dense": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)},
          "head": {"kernel": jnp.ones((8, 2))}}


def test_a_rule_matching_no_leaf_names_the_rule():
  with pytest.raises(ValueError, match=r"Rule 0 \('convs/0/' -> dense\) matches no leaf"):
    ij.groups.plan(PARAMS, [("convs/0/", ij.groups.DENSE), ("kernel$", ij.groups.element())])


def test_optional_and_fallback_rules_may_match_nothing():
  rules = [ij.groups.optional("convs/0/", ij.groups.DENSE), ("kernel$", ij.groups.neurons(-1)),
           ("kernel$", ij.groups.element())]  # the last is a fallback taken by rule 1
  the_plan = ij.groups.plan(PARAMS, rules)
  assert the_plan["dense"]["kernel"].kind == "neurons"


def test_invalid_regex_and_malformed_rules_name_the_rule():
  with pytest.raises(ValueError, match=r"Rule 1 pattern 'ker\(nel' is not a valid regex"):
    ij.groups.plan(PARAMS, [("bias", ij.groups.DENSE), ("ker(nel", ij.groups.element())])
  with pytest.raises(ValueError, match="Rule 0 must be a \\(pattern, granularity\\) pair"):
    ij.groups.plan(PARAMS, [("kernel", "element")])


def test_n_of_m_with_n_above_m_is_refused():
  with pytest.raises(ValueError, match="0 < n <= m, got n=4, m=2"):
    ij.groups.n_of_m(4, 2)
  with pytest.raises(ValueError, match="got n=5, m=4"):
    ij.select.n_of_m_leaf(jnp.arange(8.0), 5, 4)
  with pytest.raises(ValueError, match="got n=3, m=2"):
    ij.select.n_of_m({"k": jnp.ones((4, 1))}, 3, 2)


def test_an_empty_leaf_planned_as_units_names_the_leaf():
  params = {"empty": {"kernel": jnp.ones((0, 5))}, "d": {"kernel": jnp.ones((2, 5))}}
  with pytest.raises(ValueError, match="Leaf 'empty/kernel' of shape \\(0, 5\\) is empty"):
    ij.groups.plan(params, [("kernel", ij.groups.neurons(-1))])


def test_a_mask_of_the_wrong_shape_names_the_leaf():
  masks = {"dense": {"kernel": jnp.ones((8, 4), bool), "bias": jnp.ones((), bool)},
           "head": {"kernel": jnp.ones((), bool)}}
  with pytest.raises(ValueError, match="mask of leaf 'dense/kernel' has shape \\(8, 4\\)"):
    ij.transforms.apply_masks(PARAMS, masks)
  with pytest.raises(ValueError, match="head/kernel"):
    ij.transforms.apply_masks(PARAMS, {"dense": masks["dense"]})


def test_a_previous_tree_that_does_not_match_names_the_leaf():
  imp = ij.scores.magnitude(PARAMS)
  the_plan = ij.groups.plan(PARAMS)
  previous = ij.select.masks(imp, the_plan, 0.5)
  with pytest.raises(ValueError, match="previous mask of leaf 'head/kernel' has shape"):
    ij.select.masks(imp, the_plan, 0.5,
                    previous={**previous, "head": {"kernel": jnp.ones((2, 8), bool)}})
  with pytest.raises(ValueError, match="dense/bias"):
    ij.select.masks(imp, the_plan, 0.5, previous={"head": previous["head"]})


def test_an_optimizer_state_built_for_other_params_names_the_leaf():
  tx = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5))
  other = {**PARAMS, "head": {"kernel": jnp.ones((8, 3))}}
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  with pytest.raises(ValueError, match="built for other params: its mask of leaf 'head/kernel'"):
    tx.update(grads, tx.init(other), PARAMS)
  with pytest.raises(ValueError, match="dense/bias"):
    tx.update(grads, tx.init({"head": PARAMS["head"]}), PARAMS)
  with pytest.raises(ValueError, match="got a ScaleByAdamState as its state"):
    tx.update(grads, optax.scale_by_adam().init(PARAMS), PARAMS)
  packed = ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5), pack=True)
  with pytest.raises(ValueError, match="head/kernel"):
    packed.update(grads, packed.init(other), PARAMS)
  updates, _ = packed.update(grads, packed.init(PARAMS), PARAMS)  # its own state is accepted
  assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


def test_a_sampler_for_another_stack_depth_is_refused():
  params = {"blocks": {"w": jnp.ones((4, 3))}, "head": jnp.ones(3)}
  loss = lambda p, x, run: jnp.sum(run(x) * p["head"])
  block = lambda layer, h: h * layer["w"]
  sampling = ij.transforms.layer_sampling(loss, block, optax.sgd(0.1), ij.transforms.lisa(6))
  with pytest.raises(ValueError, match="draws from 6 layers, but the stack at 'blocks' has 4"):
    sampling.init(params, jax.random.key(0))
  dropped = ij.transforms.layer_drop(loss, block)
  with pytest.raises(ValueError, match="probs has shape \\(6,\\), but the stack at 'blocks' has 4"):
    dropped(params, jax.random.key(0), jnp.full(6, 0.1), jnp.ones(3))


def test_eager_sparsity_outside_the_unit_interval_is_refused():
  imp = ij.scores.magnitude(PARAMS)
  for bad in (1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
      ij.select.masks(imp, ij.groups.plan(PARAMS), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
      ij.select.topk(imp, bad)


def test_traced_sparsity_outside_the_unit_interval_does_what_the_docstring_says():
  imp = ij.scores.magnitude(PARAMS)
  topk = jax.jit(ij.select.topk)
  everything = topk(imp, jnp.float32(1.5))
  assert not any(bool(jnp.any(m)) for m in jax.tree.leaves(everything))
  for nothing in (jnp.float32(jnp.nan), jnp.float32(-0.5)):
    assert all(bool(jnp.all(m)) for m in jax.tree.leaves(topk(imp, nothing)))


def test_eager_bits_out_of_range_name_the_leaf():
  with pytest.raises(ValueError, match="bits of leaf 'dense/kernel' must be integers in \\[2, 8\\]"):
    ij.transforms.fake_quant(PARAMS, {"dense": {"kernel": 9, "bias": None},
                                      "head": {"kernel": None}})
  with pytest.raises(ValueError, match="Leaf 'head/kernel': unknown float format 'fp4'"):
    ij.transforms.fake_quant(PARAMS, {"dense": {"kernel": None, "bias": None},
                                      "head": {"kernel": "fp4"}})


def test_missing_subtree_and_unknown_names_are_named():
  with pytest.raises(ValueError, match="No subtree 'encoder/blocks'"):
    ij.tree_utils.get_path(PARAMS, "encoder/blocks")
  with pytest.raises(ValueError, match="Unknown criterion 'snip'"):
    ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5), "snip")
  with pytest.raises(ValueError, match="Selector normalizer='zscore'"):
    ij.transforms.prune(optax.sgd(0.1), ij.schedules.one_shot(0.5),
                        selector=ij.select.Selector(normalizer="zscore"))
