"""One-shot magnitude, Wanda and SparseGPT of any model's kernels from captured statistics:
against the layer-wise kernel pruner fed by hand-computed inputs, and on every zoo member the
requested share along each kernel's contraction axes, pruned entries zero, SparseGPT's error
below magnitude's, and masks that hold through recovery fine-tuning."""

import dataclasses

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from impjax import pruning
from impjax import structure
from impjax import transforms
from impjax import tree_utils
from impjax.structure import one_shot
from impjax.structure import segments
from impjax.structure import tracing
from impjax.models import zoo
from tests.helpers import zoo_model


@pytest.mark.parametrize("method, kwargs", [("magnitude", {"sparsity": 0.5}),
                                            ("wanda", {"sparsity": 0.5}),
                                            ("sparsegpt", {"n_of_m": (2, 4)})])
def test_equals_the_kernel_pruner_on_inputs_computed_by_hand(method, kwargs):
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32),
            "w2": jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)}
  fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
  x = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
  s = structure.discover(fn, params, x)
  m = structure.input_moments(fn, params, x, gram=True)
  new, masks = structure.prune_kernels(params, m, s, method, dense_io=False, blocksize=8,
                                       **kwargs)
  for path, inputs in (("w1", x), ("w2", jnp.tanh(x @ params["w1"]))):  # the dense inputs
    inputs = np.asarray(inputs, np.float64)
    stats = {"sq": jnp.asarray((inputs ** 2).mean(0), jnp.float32),
             "gram": jnp.asarray(inputs.T @ inputs / len(inputs), jnp.float32)}
    want, keep = pruning.prune_kernel(method, params[path], stats, blocksize=8, **kwargs)
    np.testing.assert_array_equal(masks[path], keep, err_msg=path)
    np.testing.assert_allclose(new[path], want, rtol=1e-4, atol=1e-5, err_msg=path)


def _contraction_last(w, axes, stacked):
  """The kernel as ``(..., C)``: every other axis first, its contraction axes flattened last."""
  contraction = list(axes[1:] if stacked else axes)
  rest = [a for a in range(w.ndim) if a not in contraction]
  moved = np.transpose(np.asarray(w), rest + contraction)
  return moved.reshape(moved.shape[:len(rest)] + (-1,))


@pytest.mark.parametrize("name", [n for n in zoo.NAMES if n != "resnet"])
def test_every_zoo_model_gets_wanda_and_sparsegpt_along_its_contraction_axes(name):
  member, s = zoo_model(name)
  params = member.params
  m = structure.input_moments(member.apply, params, *member.inputs, gram=True)
  leaves = tree_utils.leaves_by_path(params)
  wanda, wanda_masks = structure.prune_kernels(params, m, s, "wanda", sparsity=0.5)
  gpt, gpt_masks = structure.prune_kernels(params, m, s, "sparsegpt", n_of_m=(2, 4))
  mag, _ = structure.prune_kernels(params, m, s, "magnitude", n_of_m=(2, 4))
  pruned = [p for p, k in tree_utils.leaves_by_path(wanda_masks).items() if np.ndim(k)]
  assert pruned, name
  for path in pruned:
    k = s.kernels[path]
    assert not (k.reads_input or k.writes_output or k.kind == "embedding"), path
    stacked = np.ndim(m.count[path]) > 0
    keep = _contraction_last(tree_utils.leaves_by_path(wanda_masks)[path], m.axes[path], stacked)
    c = keep.shape[-1]
    assert (keep.sum(-1) == c - round(0.5 * c)).all(), path  # Wanda: per output
    assert (np.asarray(tree_utils.leaves_by_path(wanda)[path])[
        ~np.asarray(tree_utils.leaves_by_path(wanda_masks)[path])] == 0).all(), path
  for path, keep in tree_utils.leaves_by_path(gpt_masks).items():
    if not np.ndim(keep):
      continue
    stacked = np.ndim(m.count[path]) > 0
    groups_of_4 = _contraction_last(keep, m.axes[path], stacked).reshape(-1, 4)
    assert (groups_of_4.sum(-1) == 2).all(), path
    # SparseGPT's claim: a lower reconstruction error on the calibration inputs than magnitude.
    def error(new):
      d = _contraction_last(leaves[path], m.axes[path], stacked) - _contraction_last(
          tree_utils.leaves_by_path(new)[path], m.axes[path], stacked)
      d = d.reshape((m.count[path].shape[0] if stacked else 1, -1, d.shape[-1]))
      g = np.asarray(m.gram[path]).reshape((d.shape[0],) + m.gram[path].shape[-2:])
      return float(np.einsum("loc,lcd,lod->", d, g, d))
    assert error(gpt) < error(mag), path


def test_masks_hold_through_recovery_fine_tuning_and_resnet_is_refused():
  member, s = zoo_model("lm")
  params = member.params
  m = structure.input_moments(member.apply, params, *member.inputs, gram=True)
  new, masks = structure.prune_kernels(params, m, s, "sparsegpt", sparsity=0.5)
  tx = transforms.hold_masks(optax.adam(1e-2), masks)
  loss = jax.jit(lambda p: jnp.mean(jnp.square(member.apply(p, *member.inputs))))

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  state, p = tx.init(new), new
  for _ in range(3):
    p, state = step(p, state)
  for path, keep in tree_utils.leaves_by_path(masks).items():
    w = np.asarray(tree_utils.leaves_by_path(p)[path])
    kept = np.broadcast_to(np.asarray(keep), w.shape)
    assert (w[~kept] == 0).all(), path
  assert float(loss(p)) < float(loss(new))
  resnet, rs = zoo_model("resnet")
  rm = structure.input_moments(resnet.apply, resnet.params, *resnet.inputs)
  with pytest.raises(ValueError, match="No kernel to prune.*not captured"):
    structure.prune_kernels(resnet.params, rm, rs, "wanda", sparsity=0.5)


# ------------------------------------------------------------------------ layer-sequential
def test_each_block_is_calibrated_on_the_blocks_already_pruned():
  rng = np.random.default_rng(1)
  params = {"layers": {str(i): {"kernel": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32)}
                       for i in range(3)}}
  fn = lambda p, x: jnp.tanh(jnp.tanh(jnp.tanh(x @ p["layers"]["0"]["kernel"])
                                      @ p["layers"]["1"]["kernel"]) @ p["layers"]["2"]["kernel"])
  x = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
  s = structure.discover(fn, params, x)
  new, masks = structure.prune_sequential(fn, params, s, [(x,)], "sparsegpt", sparsity=0.5,
                                          dense_io=False, blocksize=8, progress=False)
  h, want = np.asarray(x, np.float64), {}
  for i in range(3):  # by hand: each kernel pruned on the inputs of the pruned model so far
    stats = {"gram": jnp.asarray(h.T @ h / len(h), jnp.float32)}
    kernel, keep = pruning.prune_kernel("sparsegpt", params["layers"][str(i)]["kernel"], stats,
                                        sparsity=0.5, blocksize=8)
    want[str(i)] = (kernel, keep)
    h = np.tanh(h @ np.asarray(kernel, np.float64))
  for i, (kernel, keep) in want.items():
    np.testing.assert_array_equal(masks["layers"][i]["kernel"], keep, err_msg=i)
    np.testing.assert_allclose(new["layers"][i]["kernel"], kernel, rtol=1e-4, atol=1e-5)
  one_pass, _ = structure.prune_kernels(params, structure.input_moments(fn, params, x, gram=True),
                                        s, "sparsegpt", sparsity=0.5, dense_io=False, blocksize=8)
  assert not np.allclose(one_pass["layers"]["2"]["kernel"], new["layers"]["2"]["kernel"])


@pytest.mark.parametrize("method, kwargs", [("wanda", {"sparsity": 0.5}),
                                            ("sparsegpt", {"n_of_m": (2, 4)})])
def test_on_minilm_it_gives_the_layerwise_pruners_masks_and_weights(method, kwargs):
  member, s = zoo_model("minilm")
  ids, mask = member.inputs
  mask = np.asarray(mask).copy()
  mask[0, -2:] = 0  # padding: the token masks weight the statistics
  batches = [(ids, jnp.asarray(mask)), (ids[::-1], jnp.asarray(mask[::-1]))]
  new, masks = structure.prune_sequential(member.apply, member.params, s, batches, method,
                                          token_masks=[m for _, m in batches], blocksize=8,
                                          progress=False, **kwargs)
  model, want = pruning.prune_layerwise(member.model, [{"ids": i, "mask": m} for i, m in batches],
                                        method, blocksize=8, progress=False, **kwargs)
  got = tree_utils.leaves_by_path(masks)
  weights = tree_utils.leaves_by_path(new)
  reference = tree_utils.leaves_by_path(nnx.to_pure_dict(nnx.split(model)[1]))
  assert sorted(p for p, m in got.items() if np.ndim(m)) == sorted(want)
  for path, keep in want.items():
    np.testing.assert_array_equal(got[path], keep, err_msg=path)
    np.testing.assert_allclose(weights[path], reference[path], rtol=1e-4, atol=1e-5,
                               err_msg=path)


def test_a_scanned_stack_is_pruned_layer_by_layer_like_its_looped_twin():
  looped, s_loop = zoo_model("vit")
  scanned, s_scan = zoo_model("vit_scan")
  depth = looped.config.depth
  blocks = [looped.params["Transformer"][f"encoderblock_{i}"] for i in range(depth)]
  tr = {k: v for k, v in looped.params["Transformer"].items() if not k.startswith("encoderblock_")}
  params = dict(looped.params, Transformer=dict(
      tr, encoderblock=jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)))
  batches = [looped.inputs]
  a, masks_loop = structure.prune_sequential(looped.apply, looped.params, s_loop, batches,
                                             "sparsegpt", sparsity=0.5, progress=False)
  b, masks_scan = structure.prune_sequential(scanned.apply, params, s_scan, batches,
                                             "sparsegpt", sparsity=0.5, progress=False)
  stacked = 0
  for path, keep in tree_utils.leaves_by_path(masks_scan).items():
    if "encoderblock/" not in path or not np.ndim(keep):
      continue
    stacked += 1
    for i in range(depth):
      twin = path.replace("encoderblock/", f"encoderblock_{i}/")
      np.testing.assert_array_equal(np.asarray(keep)[i],
                                    tree_utils.leaves_by_path(masks_loop)[twin], err_msg=twin)
      np.testing.assert_allclose(np.asarray(tree_utils.leaves_by_path(b)[path])[i],
                                 tree_utils.leaves_by_path(a)[twin], rtol=1e-4, atol=1e-5)
  assert stacked == 6  # q, k, v, out and the MLP's two kernels


def _two_batches(member):
  """The member's inputs and a second batch of other content (and, for MiniLM, another
  length and padding)."""
  if member.name == "minilm":
    ids, mask = member.inputs
    short = (ids[::-1, :-3], jnp.asarray(np.asarray(mask[::-1, :-3]).copy()).at[0, -1].set(0))
    return [member.inputs, short], [mask, short[1]]
  return [member.inputs, jax.tree.map(lambda x: x[::-1], member.inputs)], None


@pytest.mark.parametrize("name,method", [("minilm", "wanda"), ("gemma", "sparsegpt"),
                                         ("lm", "wanda"), ("vit", "sparsegpt"),
                                         ("vit_scan", "sparsegpt")])
def test_the_cut_model_runs_once_and_prunes_as_the_whole_model_rerun(name, method, monkeypatch):
  member, s = zoo_model(name)
  batches, token_masks = _two_batches(member)
  kwargs = dict(sparsity=0.5, token_masks=token_masks, blocksize=8, progress=False)
  runs = []
  real_run = segments.Segments.run
  monkeypatch.setattr(segments.Segments, "run",
                      lambda self, i, *a, **k: runs.append(i) or real_run(self, i, *a, **k))
  new, masks = structure.prune_sequential(member.apply, member.params, s, batches, method,
                                          **kwargs)
  host, host_masks = structure.prune_sequential(member.apply, member.params, s, batches, method,
                                                host=True, **kwargs)
  blocks = len(structure.blocks(structure.input_moments(member.apply, member.params,
                                                        *member.inputs), [
      p for p, k in tree_utils.leaves_by_path(masks).items() if np.ndim(k)]))
  # per call: every block captured on each batch, and all but the last run pruned once more
  assert len(runs) == 2 * (2 * blocks - 1) * len(batches)
  monkeypatch.setattr(one_shot, "_segments", lambda *a: None)  # the whole model per block
  want, want_masks = structure.prune_sequential(member.apply, member.params, s, batches, method,
                                                **kwargs)
  chex.assert_trees_all_equal(masks, want_masks, host_masks)
  chex.assert_trees_all_close(new, want, host, rtol=1e-4, atol=1e-5)


def test_segments_chain_to_the_model_and_host_values_are_numpy():
  member, s = zoo_model("gemma")
  t = tracing.trace(member.apply, member.params, *member.inputs)
  paths = [[f"blocks/{i}/attn/q_einsum/kernel", f"blocks/{i}/mlp/linear/kernel"]
           for i in range(member.config.depth)]
  seg = segments.cut(t, paths)
  assert seg is not None and len(seg) == member.config.depth
  live = seg.start(member.inputs, host=True)
  captured = {}
  for i in range(len(seg)):
    ends, alone = seg.run(i, member.params, live, ends=False)  # the moments alone
    live, m = seg.run(i, member.params, live, host=True)
    assert all(isinstance(v, np.ndarray) for v in live)
    assert ends == []
    chex.assert_trees_all_close(alone, m, rtol=1e-6, atol=1e-6)
    captured.update(m.sq)
  with pytest.raises(ValueError, match="computes nothing"):
    seg.run(0, member.params, seg.start(member.inputs), capture=False, ends=False)
  np.testing.assert_allclose(live[0], member.apply(member.params, *member.inputs), rtol=1e-5,
                             atol=1e-5)
  whole = structure.input_moments(member.apply, member.params, *member.inputs)
  assert sorted(captured) == sorted(whole.sq)
  chex.assert_trees_all_close(captured, whole.sq, rtol=1e-5)


def test_a_scan_over_the_layers_is_cut_between_its_iterations():
  scanned, _ = zoo_model("vit_scan")
  t = tracing.trace(scanned.apply, scanned.params, *scanned.inputs)
  stack = "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"
  depth = scanned.config.depth
  seg = segments.cut(t, [[(stack, i)] for i in range(depth)])
  assert seg is not None and len(seg) == depth
  whole = structure.input_moments(scanned.apply, scanned.params, *scanned.inputs)
  live = seg.start(scanned.inputs)
  for i in range(depth):
    live, m = seg.run(i, scanned.params, live)
    assert np.shape(m.count[stack]) == ()  # layer i's alone
    np.testing.assert_allclose(m.sq[stack], whole.sq[stack][i], rtol=1e-5, err_msg=str(i))
  np.testing.assert_allclose(live[0], scanned.apply(scanned.params, *scanned.inputs),
                             rtol=1e-5, atol=1e-5)
  assert segments.cut(t, [[stack], ["head/kernel"]]) is not None  # the whole scan, the head
  assert segments.cut(t, [[(stack, 1)], [(stack, 0)]]) is None  # out of order
  assert segments.cut(t, [[stack], [(stack, 1)]]) is None  # all iterations, then one
  # Five layers: the three between the first and the last share one compiled program.
  deep = zoo.from_config("vit_scan", dataclasses.replace(scanned.config, depth=5),
                         scanned.inputs[0].shape)
  t = tracing.trace(deep.apply, deep.params, *deep.inputs)
  seg = segments.cut(t, [[(stack, i)] for i in range(5)])
  whole = structure.input_moments(deep.apply, deep.params, *deep.inputs)
  live = seg.start(deep.inputs)
  for i in range(5):
    live, m = seg.run(i, deep.params, live)
    np.testing.assert_allclose(m.sq[stack], whole.sq[stack][i], rtol=1e-5, err_msg=str(i))
  assert len(seg._programs) == 3  # pylint: disable=protected-access
  np.testing.assert_allclose(live[0], deep.apply(deep.params, *deep.inputs), rtol=1e-5,
                             atol=1e-5)
  s_deep = structure.discover(deep.apply, deep.params, *deep.inputs)
  prune = lambda: structure.prune_sequential(deep.apply, deep.params, s_deep, [deep.inputs],
                                             "sparsegpt", sparsity=0.5, blocksize=8,
                                             progress=False)
  got = prune()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(one_shot, "_segments", lambda *a: None)  # the whole model per block
    want = prune()
  chex.assert_trees_all_equal(got[1], want[1])
  chex.assert_trees_all_close(got[0], want[0], rtol=1e-4, atol=1e-5)
  params = {"w": jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])}
  reversed_scan = lambda p, x: jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, p["w"],
                                            reverse=True)[0]
  t = tracing.trace(reversed_scan, params, jnp.ones((1, 2)))
  assert segments.cut(t, [[("w", 0)], [("w", 1)]]) is None  # layer 1 runs first


@pytest.mark.parametrize("name", [n for n in zoo.NAMES if n != "resnet"])
def test_sequential_two_four_on_every_zoo_model(name):
  member, s = zoo_model(name)
  new, masks = structure.prune_sequential(member.apply, member.params, s, [member.inputs],
                                          "wanda", n_of_m=(2, 4), progress=False)
  m = structure.input_moments(member.apply, member.params, *member.inputs)
  pruned = 0
  for path, keep in tree_utils.leaves_by_path(masks).items():
    if not np.ndim(keep):
      continue
    pruned += 1
    stacked = np.ndim(m.count[path]) > 0
    assert (_contraction_last(keep, m.axes[path], stacked).reshape(-1, 4).sum(-1) == 2).all()
    w = np.asarray(tree_utils.leaves_by_path(new)[path])
    assert (w[~np.asarray(keep)] == 0).all(), path
  assert pruned >= 2, name


def test_owl_sparsities_by_hand_and_pruned_at_them():
  rng = np.random.default_rng(2)
  params = {"layers": {str(i): {"kernel": jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)}
                       for i in range(3)}}
  params["layers"]["1"]["kernel"] = params["layers"]["1"]["kernel"].at[:3, :3].mul(40.0)
  fn = lambda p, x: jnp.tanh(jnp.tanh(x @ p["layers"]["0"]["kernel"])
                             @ p["layers"]["1"]["kernel"]) @ p["layers"]["2"]["kernel"]
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  s = structure.discover(fn, params, x)
  m = structure.input_moments(fn, params, x)
  got = structure.owl_sparsities(params, m, s, 0.7, lam=0.1, dense_io=False)
  # By hand: Wanda scores of each block's kernel, their share above 5x the block's mean.
  h, ratios = np.asarray(x, np.float64), []
  for i in range(3):
    w = np.asarray(params["layers"][str(i)]["kernel"], np.float64)
    score = np.abs(w) * np.sqrt((h ** 2).mean(0))[:, None]
    ratios.append(np.mean(score > 5 * score.mean()))
    h = np.tanh(h @ w) if i < 2 else h
  ratios = np.asarray(ratios)
  density = (ratios - ratios.min()) / (ratios.max() - ratios.min()) * 0.2
  density = density - density.mean() + 0.3
  want = {f"layers/{i}": 1 - d for i, d in enumerate(density)}
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6), k
  assert np.mean(list(got.values())) == pytest.approx(0.7) and got["layers/1"] < 0.7
  _, masks = structure.prune_sequential(fn, params, s, [(x,)], "wanda", sparsity=got,
                                        dense_io=False, progress=False)
  for i in range(3):
    keep = np.asarray(masks["layers"][str(i)]["kernel"])
    assert (keep.sum(0) == 16 - round(got[f"layers/{i}"] * 16)).all()
  with pytest.raises(ValueError, match="miss \\['layers/2'\\]"):
    structure.prune_sequential(fn, params, s, [(x,)], "wanda", dense_io=False, progress=False,
                               sparsity={k: v for k, v in got.items() if k != "layers/2"})


def test_dsnot_refines_wandas_masks_toward_the_mean_output_on_any_kernel():
  member, s = zoo_model("gemma")
  batches = [member.inputs, jax.tree.map(lambda x: x[::-1], member.inputs)]
  m = structure.batch_moments(member.apply, member.params, batches)
  wanda, wanda_masks = structure.prune_kernels(member.params, m, s, "wanda", sparsity=0.6)
  refined, masks = structure.prune_kernels(member.params, m, s, "dsnot", sparsity=0.6)
  swapped = 0
  for path, keep in tree_utils.leaves_by_path(masks).items():
    if not np.ndim(keep):
      continue
    w = np.asarray(tree_utils.leaves_by_path(member.params)[path], np.float64)
    old = np.asarray(tree_utils.leaves_by_path(wanda_masks)[path])
    axes = m.axes[path]
    mean = np.asarray(m.sums[path], np.float64) / float(m.count[path])
    lost = lambda k: np.tensordot(mean, np.where(k, 0.0, w), axes=(list(range(len(axes))), axes))
    assert (np.abs(lost(np.asarray(keep))) <= np.abs(lost(old)) + 1e-6).all(), path
    np.testing.assert_array_equal(np.sum(keep, axis=axes), np.sum(old, axis=axes))
    swapped += int((np.asarray(keep) != old).sum())
    got = np.asarray(tree_utils.leaves_by_path(refined)[path])
    np.testing.assert_array_equal(got, np.where(keep, w, 0).astype(np.float32))
  assert swapped > 0
  with pytest.raises(ValueError, match="dsnot refines unstructured masks"):
    structure.prune_sequential(member.apply, member.params, s, batches, "dsnot",
                               n_of_m=(2, 4), progress=False)
  sequential, _ = structure.prune_sequential(member.apply, member.params, s, batches, "dsnot",
                                             sparsity=0.6, progress=False)
  assert jax.tree.structure(sequential) == jax.tree.structure(member.params)
