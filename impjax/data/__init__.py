"""Datasets and input pipelines, all built offline from what ships with the project.

- ``digits``: the ``sklearn_digits`` tfds builder (scikit-learn's 8x8 digits, array_record).
- ``input_pipeline``: preparing and loading splits, deterministic and process-sharded batches.
- ``synthetic``: ``gaussian_clusters``, a seeded task on which accuracy keeps rising with width.
- ``text``: English calibration and evaluation text from Python's reference pages and
  standard-library docstrings, and a retrieval task (disjoint splits).
- ``language_modeling``: that text as a language-modeling task: a BPE vocabulary, packed
  sequences, a fixed :class:`~impjax.data.language_modeling.Protocol`, training and perplexity.

Example:
  >>> from impjax import data
  >>> import numpy as np
  >>> batch = next(data.batches({"x": np.arange(10)}, batch_size=4, seed=0))
  >>> len(batch["x"])
  4
"""

from impjax.data.digits import SklearnDigits
from impjax.data.input_pipeline import DEFAULT_DATA_DIR
from impjax.data.input_pipeline import batches
from impjax.data.input_pipeline import batches_from_step
from impjax.data.input_pipeline import load_split
from impjax.data.input_pipeline import num_batches
from impjax.data.input_pipeline import prepare_digits

__all__ = [
    "DEFAULT_DATA_DIR",
    "SklearnDigits",
    "batches",
    "batches_from_step",
    "load_split",
    "num_batches",
    "prepare_digits",
]
