"""Digits CNN, gradually pruned to 90% sparsity with the OBD criterion.

Run:
  python launch/main.py --config=configs/digits_cnn.py --workdir=/tmp/impjax_cnn
Override any field, e.g. ``--config.pruning.granularity=2:4``;
``--config=configs/digits_cnn.py:quick`` gives a short smoke run.
"""

from impjax import train


def get_config(arg: str | None = None):
  """Returns the config; ``arg="quick"`` shortens the run."""
  config = train.default_config(quick=train.parse_config_arg(arg))
  config.model = "cnn"
  return config
