"""Digits MLP, gradually pruned to 90% sparsity with the OBD criterion.

Run:
  python launch/main.py --config=configs/digits_mlp.py --workdir=/tmp/impjax_mlp
Override any field, e.g. ``--config.pruning.criterion=magnitude --config.steps=3000``;
``--config=configs/digits_mlp.py:quick`` gives a short smoke run.
"""

from impjax import train


def get_config(arg: str | None = None):
  """Returns the config; ``arg="quick"`` shortens the run."""
  config = train.default_config(quick=train.parse_config_arg(arg))
  config.model = "mlp"
  return config
