"""Flax NNX models: an MLP and a small CNN."""

from impjax.models.cnn import CNN
from impjax.models.mlp import MLP, num_params

__all__ = ["CNN", "MLP", "num_params"]

from impjax.models import minilm
from impjax.models.minilm import MiniLM, MiniLMConfig

__all__ += ["minilm", "MiniLM", "MiniLMConfig"]

from impjax.models.residual_mlp import ResidualBlock, ResidualMLP, block_fn

__all__ += ["ResidualBlock", "ResidualMLP", "block_fn"]
