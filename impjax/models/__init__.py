"""The model zoo, in Flax NNX.

- ``mlp``: :class:`MLP` (``num_params`` counts a model's parameters).
- ``cnn``: :class:`CNN`, a small convolutional classifier for 8x8 digits.
- ``residual_mlp``: :class:`ResidualMLP`, pre-norm residual blocks stored as one stack.
- ``minilm``: the MiniLM sentence encoder (``minilm.model``) and its loading from local
  safetensors and tokenizers files (``minilm.loading``).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax import models
  >>> models.num_params(models.MLP(64, (32,), 10, rngs=nnx.Rngs(0)))
  2410
"""

from impjax.models import minilm
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
]
