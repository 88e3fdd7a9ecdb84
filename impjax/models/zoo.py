"""The model zoo: the architectures researchers prune, each as a pure ``apply(params, *inputs)``.

:func:`build` gives a :class:`ZooMember`: the model (an unbound Linen module or an NNX module),
a pure eval-mode ``apply``, its parameters as a plain nested dict, example inputs and the
config. Members (:data:`NAMES`):

- ``vit``, ``vit_scan``: the Linen :class:`~impjax.models.vit.ViT` (blocks looped, or one
  ``nn.scan`` with parameters stacked along a leading depth axis), on NHWC images.
- ``lm``: the Linen :class:`~impjax.models.lm.TransformerLM` (learned positions, a separate
  ``logits`` Dense), on token ids.
- ``gemma``, ``gemma_mha``: the NNX :class:`~impjax.models.gemma.Gemma`, grouped-query
  (``num_kv_heads < num_heads``) and multi-head (``num_kv_heads == num_heads``).
- ``resnet``: the Linen :class:`~impjax.models.resnet.ResNet`; its params are the whole
  variables dict ``{"params", "batch_stats"}`` (running statistics drawn away from their
  initial 0 and 1, as after training, so that eval mode depends on them).
- ``minilm``: the NNX :class:`~impjax.models.minilm.MiniLM` encoder, ``apply(params, ids,
  mask)`` giving its token states.

Sizes: ``"tiny"`` (under 25k parameters, for tests; heads, head widths, MLP widths and
depths are distinct numbers so that no two axes have the same size by accident) and
``"small"`` (about 1.5-3M parameters, for benchmarks).

Example:
  >>> from impjax.models import zoo
  >>> member = zoo.build("gemma")
  >>> member.apply(member.params, *member.inputs).shape
  (2, 12, 64)
  >>> member.params["blocks"][0]["attn"]["q_einsum"]["kernel"].shape
  (6, 32, 8)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from impjax.models import gemma
from impjax.models import lm
from impjax.models import resnet
from impjax.models import vit
from impjax.models.minilm import model as minilm

NAMES = ("vit", "vit_scan", "lm", "gemma", "gemma_mha", "resnet", "minilm")
SIZES = ("tiny", "small")


class ZooMember(NamedTuple):
  """One built model of the zoo.

  Attributes:
    name: its name in :data:`NAMES`.
    model: the unbound Linen module, or the NNX module (holding ``params``).
    apply: pure ``apply(params, *inputs) -> array`` in eval mode.
    params: plain nested dict of arrays (for ``resnet`` the variables
      ``{"params", "batch_stats"}``; for NNX models ``nnx.to_pure_dict`` of the ``nnx.Param``
      state).
    inputs: example inputs (float32 NHWC images, or int32 token ids (batch, length) and for
      ``minilm`` an int32 attention mask).
    config: the model's config dataclass.
  """
  name: str
  model: Any
  apply: Callable[..., jax.Array]
  params: Any
  inputs: tuple
  config: Any


def _vit(size: str, scan: bool):
  if size == "tiny":
    return vit.ViTConfig(num_classes=10, patch=4, width=24, depth=2, mlp_dim=40, num_heads=3,
                         scan=scan), (2, 16, 16, 3)
  return vit.ViTConfig(num_classes=10, patch=4, width=192, depth=4, mlp_dim=768, num_heads=6,
                       scan=scan), (8, 32, 32, 3)


def _lm(size: str):
  if size == "tiny":
    return lm.LMConfig(vocab_size=50, width=24, depth=2, num_heads=3, qkv_dim=18, mlp_dim=40,
                       max_len=16), (2, 12)
  return lm.LMConfig(vocab_size=512, width=256, depth=3, num_heads=4, qkv_dim=256,
                     mlp_dim=768, max_len=128), (4, 64)


def _gemma(size: str, mha: bool):
  if size == "tiny":
    heads = 4 if mha else 6
    return gemma.GemmaConfig(vocab_size=64, width=32, depth=2, num_heads=heads,
                             num_kv_heads=heads if mha else 3, head_dim=8,
                             mlp_dim=40), (2, 12)
  return gemma.GemmaConfig(vocab_size=512, width=256, depth=4, num_heads=8,
                           num_kv_heads=8 if mha else 2, head_dim=32, mlp_dim=512), (4, 64)


def _resnet(size: str):
  if size == "tiny":
    return resnet.ResNetConfig(stage_sizes=(1, 1), num_filters=8, num_classes=10,
                               stem_kernel=3, stem_stride=1), (2, 16, 16, 3)
  return resnet.ResNetConfig(stage_sizes=(2, 2, 2, 2), num_filters=24, num_classes=10,
                             stem_kernel=3, stem_stride=1, stem_pool=False), (8, 32, 32, 3)


def _minilm(size: str):
  if size == "tiny":
    return minilm.MiniLMConfig(vocab_size=50, hidden_size=24, num_heads=(3, 3), head_dim=8,
                               intermediate_sizes=(40, 40), max_position=16), (2, 12)
  return minilm.MiniLMConfig(vocab_size=1024, hidden_size=256, num_heads=(4,) * 3,
                             head_dim=64, intermediate_sizes=(1024,) * 3,
                             max_position=128), (4, 64)


def _ids(rng: np.random.Generator, vocab_size: int, shape: tuple[int, int]) -> jax.Array:
  return jnp.asarray(rng.integers(0, vocab_size, shape), jnp.int32)


def _trained_batch_stats(batch_stats: dict, key: jax.Array) -> dict:
  """Running means ~ N(0, 0.1^2) and variances ~ U(0.5, 1.5) in place of the initial 0 and 1."""
  leaves, treedef = jax.tree.flatten_with_path(batch_stats)
  keys = jax.random.split(key, len(leaves))
  new = [0.1 * jax.random.normal(k, x.shape) if path[-1].key == "mean"
         else jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
         for (path, x), k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, new)


def _linen(name: str, model: nn.Module, config: Any, inputs: tuple, seed: int) -> ZooMember:
  variables = jax.jit(model.init)(jax.random.key(seed), *inputs)
  if "batch_stats" in variables:
    params = {"params": variables["params"],
              "batch_stats": _trained_batch_stats(variables["batch_stats"],
                                                  jax.random.key(seed + 1))}
    apply = lambda params, *inputs: model.apply(params, *inputs)
  else:
    params = variables["params"]
    apply = lambda params, *inputs: model.apply({"params": params}, *inputs)
  return ZooMember(name, model, apply, params, inputs, config)


def _nnx(name: str, make: Callable[[], nnx.Module], config: Any, inputs: tuple,
         call: Callable[..., jax.Array]) -> ZooMember:
  graphdef = nnx.graphdef(nnx.eval_shape(make))
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make(), nnx.Param)))()
  apply = lambda params, *inputs: call(nnx.merge(graphdef, params), *inputs)
  return ZooMember(name, nnx.merge(graphdef, params), apply, params, inputs, config)


def build(name: str, size: str = "tiny", seed: int = 0) -> ZooMember:
  """The zoo member ``name`` at ``size``, its parameters and inputs drawn from ``seed``.

  Args:
    name: one of :data:`NAMES`.
    size: ``"tiny"`` or ``"small"``.
    seed: seeds the initialization and the example inputs.

  Returns:
    The :class:`ZooMember`.

  Example:
    >>> member = build("resnet")
    >>> sorted(member.params), member.apply(member.params, *member.inputs).shape
    (['batch_stats', 'params'], (2, 10))
  """
  if name not in NAMES:
    raise ValueError(f"Unknown zoo model {name!r}; expected one of {NAMES}.")
  if size not in SIZES:
    raise ValueError(f"Unknown size {size!r}; expected one of {SIZES}.")
  if name in ("vit", "vit_scan"):
    config, shape = _vit(size, scan=name == "vit_scan")
  elif name in ("gemma", "gemma_mha"):
    config, shape = _gemma(size, mha=name == "gemma_mha")
  else:
    config, shape = {"resnet": _resnet, "lm": _lm, "minilm": _minilm}[name](size)
  return from_config(name, config, shape, seed)


def from_config(name: str, config: Any, shape: tuple[int, ...], seed: int = 0) -> ZooMember:
  """The zoo architecture ``name`` built from its own ``config`` (e.g. a
  :class:`~impjax.models.gemma.GemmaConfig` of another vocabulary), with example inputs of
  ``shape`` (images NHWC, or token ids ``(batch, length)``).

  Example:
    >>> from impjax.models import gemma
    >>> c = gemma.GemmaConfig(vocab_size=300, width=16, depth=1, num_heads=2, num_kv_heads=1,
    ...                       head_dim=8, mlp_dim=32)
    >>> member = from_config("gemma", c, (2, 5))
    >>> member.apply(member.params, jnp.zeros((1, 4), jnp.int32)).shape
    (1, 4, 300)
  """
  if name not in NAMES:
    raise ValueError(f"Unknown zoo model {name!r}; expected one of {NAMES}.")
  rng = np.random.default_rng(seed)
  if name in ("vit", "vit_scan", "resnet"):
    images = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    module = resnet.ResNet(config) if name == "resnet" else vit.ViT(config)
    return _linen(name, module, config, (images,), seed)
  if name == "lm":
    return _linen(name, lm.TransformerLM(config), config,
                  (_ids(rng, config.vocab_size, shape),), seed)
  if name in ("gemma", "gemma_mha"):
    return _nnx(name, lambda: gemma.Gemma(config, rngs=nnx.Rngs(seed)), config,
                (_ids(rng, config.vocab_size, shape),), lambda model, ids: model(ids))
  lengths = rng.integers(shape[1] // 2, shape[1] + 1, shape[0])
  mask = jnp.asarray(np.arange(shape[1]) < lengths[:, None], jnp.int32)
  return _nnx(name, lambda: minilm.MiniLM(config, rngs=nnx.Rngs(seed)), config,
              (_ids(rng, config.vocab_size, shape), mask),
              lambda model, ids, mask: model(ids, mask))
