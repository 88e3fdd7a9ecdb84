"""Digits MLP, gradually pruned to 90% sparsity with the OBD criterion (the defaults).

Run:
  python launch/main.py --config=configs/digits_mlp.py --workdir=/tmp/impjax_mlp
Override any field, e.g. ``--config.pruning.criterion=magnitude --config.steps=3000``;
``--config=configs/digits_mlp.py:quick`` gives a short smoke run.
"""

from configs import default


def get_config(arg: str | None = None):
  """The defaults with the MLP; ``arg="quick"`` shortens the run."""
  config = default.get_config(arg)
  config.model.name = "mlp"
  return config
