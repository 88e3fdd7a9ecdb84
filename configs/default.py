"""The defaults of the main job: the digits MLP, gradually pruned to 90% sparsity with OBD.

Every other config starts from ``get_config()`` and overrides what it changes.

Run:
  python launch/main.py --config=configs/default.py --workdir=/tmp/impjax_digits
Override any field, e.g. ``--config.pruning.criterion=magnitude --config.model.name=cnn``;
``--config=configs/default.py:quick`` gives a short smoke run.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Every field the main job reads; ``arg="quick"`` shortens the run, nothing else is valid."""
  if arg not in (None, "", "quick"):
    raise ValueError(f"Unknown config argument {arg!r}; use 'quick' or nothing.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "sklearn_digits"
  config.data_dir = ""  # empty: impjax.data.DEFAULT_DATA_DIR
  config.train_split = "train"
  config.test_split = "test"

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"               # a key of launch/train.py's MODELS: mlp|cnn
  config.model.mlp_hidden = (256, 256)
  config.model.cnn_channels = (32, 64)
  config.model.cnn_dense = 128

  config.batch_size = 128
  config.steps = 4000
  config.learning_rate = 1e-3
  config.weight_decay = 1e-4

  config.pruning = ml_collections.ConfigDict()
  # gradual: dense, then pruned on the schedule (transforms.prune); rigl|set|static: sparse from
  # step 0 at final_sparsity, rewired every `frequency` steps until end_step
  # (transforms.sparse_training; ERK counts unless allocation=uniform; element granularity).
  config.pruning.method = "gradual"
  config.pruning.drop_fraction = 0.3      # rigl|set: share of active weights rewired at step 0
  config.pruning.criterion = "obd"        # a registered criterion: impjax.scores.CRITERIA
  config.pruning.schedule = "polynomial"  # polynomial|iterative|one_shot
  config.pruning.final_sparsity = 0.9
  config.pruning.begin_step = 1500
  config.pruning.end_step = 3000
  config.pruning.frequency = 100
  config.pruning.granularity = "element"  # element|neurons|N:M such as 2:4
  config.pruning.keep_dense = ""          # regex of kernel paths left dense, e.g. "convs/0/"
  config.pruning.scope = "global"         # global|local
  config.pruning.allocation = ""          # ""|uniform|erk (erk/uniform need scope=local)
  config.pruning.ema_decay = 0.99

  config.log_every = 100
  config.max_nonfinite_steps = 10  # stop when this many steps in a row had non-finite grads
                                   # (checked every log_every steps)
  config.eval_every = 250
  config.checkpoint_every = 500
  config.halt_after_step = -1  # >= 0: stop after this step without saving, as a preemption
  config.progress = True

  if arg == "quick":
    config.steps = 400
    config.pruning.begin_step = 100
    config.pruning.end_step = 300
    config.pruning.frequency = 50
    config.eval_every = 100
    config.checkpoint_every = 200
  return config
