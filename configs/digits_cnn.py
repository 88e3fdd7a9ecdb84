"""Digits CNN, gradually pruned to 90% sparsity with the OBD criterion.

Run:
  python launch/main.py --config=configs/digits_cnn.py --workdir=/tmp/impjax_cnn
Override any field, e.g. ``--config.pruning.granularity=2:4``;
``--config=configs/digits_cnn.py:quick`` gives a short smoke run.
"""

from configs import default


def get_config(arg: str | None = None):
  """The defaults with the CNN; ``arg="quick"`` shortens the run."""
  config = default.get_config(arg)
  config.model.name = "cnn"
  return config
