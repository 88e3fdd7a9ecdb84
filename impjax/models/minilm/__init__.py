"""MiniLM (BERT-style encoder) in Flax NNX: the model (``model``), its loading from local
safetensors and tokenizers files (``loading``), and its discovered MLP-unit and head groups
and compaction (``compaction``).

Example:
  >>> from impjax.models import minilm
  >>> config = minilm.MiniLMConfig()  # all-MiniLM-L6-v2's shape
  >>> config.num_layers, config.hidden_size, config.num_heads[0] * config.head_dim
  (6, 384, 384)
"""

from impjax.models.minilm.compaction import compact_encoder
from impjax.models.minilm.compaction import encoder_groups
from impjax.models.minilm.loading import embed_texts
from impjax.models.minilm.loading import from_params
from impjax.models.minilm.loading import load
from impjax.models.minilm.loading import load_pretrained
from impjax.models.minilm.loading import params_from_torch
from impjax.models.minilm.loading import token_batches
from impjax.models.minilm.loading import tokenize
from impjax.models.minilm.model import Embeddings
from impjax.models.minilm.model import EncoderLayer
from impjax.models.minilm.model import MiniLM
from impjax.models.minilm.model import MiniLMConfig
from impjax.models.minilm.model import config_from_json
from impjax.models.minilm.model import config_from_params
from impjax.models.minilm.model import encoder_flops
from impjax.models.minilm.model import mean_pool
from impjax.models.minilm.model import normalize

__all__ = [
    "Embeddings",
    "EncoderLayer",
    "MiniLM",
    "MiniLMConfig",
    "compact_encoder",
    "config_from_json",
    "config_from_params",
    "embed_texts",
    "encoder_flops",
    "encoder_groups",
    "from_params",
    "load",
    "load_pretrained",
    "mean_pool",
    "normalize",
    "params_from_torch",
    "token_batches",
    "tokenize",
]
