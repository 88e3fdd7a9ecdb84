"""impjax's models: small NNX models for the main job, and the zoo of public architectures.

- ``mlp``: :class:`MLP` (``num_params`` counts a model's parameters).
- ``cnn``: :class:`CNN`, a small convolutional classifier for 8x8 digits.
- ``residual_mlp``: :class:`ResidualMLP`, pre-norm residual blocks stored as one stack.
- ``minilm``: the MiniLM sentence encoder (``minilm.model``) and its loading from local
  safetensors and tokenizers files (``minilm.loading``).
- ``vit`` (Linen ViT, looped or ``nn.scan``), ``lm`` (Linen decoder LM), ``gemma`` (NNX
  Gemma-style decoder: RMSNorm, RoPE, grouped-query attention, gated MLP, Einsum kernels, tied
  embedding), ``resnet`` (Linen ResNet with BatchNorm): models written in the styles of the
  public ones; ``zoo.build(name)`` gives any of them with a pure ``apply``, its params and
  example inputs.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax import models
  >>> models.num_params(models.MLP(64, (32,), 10, rngs=nnx.Rngs(0)))
  2410
"""

from impjax.models import minilm
from impjax.models import zoo
from impjax.models.cnn import CNN
from impjax.models.minilm import MiniLM
from impjax.models.minilm import MiniLMConfig
from impjax.models.mlp import MLP
from impjax.models.mlp import num_params
from impjax.models.residual_mlp import ResidualBlock
from impjax.models.residual_mlp import ResidualMLP
from impjax.models.residual_mlp import block_fn

__all__ = [
    "CNN",
    "MLP",
    "MiniLM",
    "MiniLMConfig",
    "ResidualBlock",
    "ResidualMLP",
    "block_fn",
    "minilm",
    "num_params",
    "zoo",
]
