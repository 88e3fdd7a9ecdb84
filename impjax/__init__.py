"""impjax: which parts of a JAX model matter, and acting on the answer.

Five pure stages, each a package:

- ``scores``: params, gradients and activations to importance pytrees; the criterion registry.
- ``estimators``: running, EMA and calibration-set statistics (optax-style init/update).
- ``groups``: granularities, path rules, reductions, normalizers, units and coupled groups.
- ``select``: masks, ranks and counts, and bit allocations from importance.
- ``transforms``: the acts — pruning during training, dropout ordering, layer sampling and
  fake quantization — as optax optimizers and function transforms.

Beside them: ``schedules`` (sparsity over steps), ``pruning`` (one-shot pruning of pretrained
models, structured pruning and compaction), ``quantization`` (quantizer numerics, PTQ,
export), ``slicing`` (cutting a model to a width or depth), ``structure`` (kernel axes and
coupled groups read from a model's traced computation), ``metrics``, ``flax`` (capture and
train-step pieces), ``models`` (the model zoo) and ``tree_utils`` (paths and checks). The
datasets (``impjax.data``), checkpoints (``impjax.checkpoint``) and plots (``impjax.viz``)
are imported on demand, as they pull in tensorflow-datasets, orbax and matplotlib.

Example:
  >>> import jax.numpy as jnp, impjax as ij
  >>> params = {"dense": {"kernel": jnp.array([[0.1, -2.0], [3.0, 0.2]])}}
  >>> imp = ij.scores.magnitude(params)
  >>> ij.select.topk(imp, sparsity=0.5)["dense"]["kernel"].tolist()
  [[False, True], [True, False]]
"""

from impjax import estimators
from impjax import flax
from impjax import groups
from impjax import metrics
from impjax import models
from impjax import pruning
from impjax import quantization
from impjax import schedules
from impjax import scores
from impjax import select
from impjax import slicing
from impjax import structure
from impjax import transforms
from impjax import tree_utils

__version__ = "0.1.0"

__all__ = [
    "estimators",
    "flax",
    "groups",
    "metrics",
    "models",
    "pruning",
    "quantization",
    "schedules",
    "scores",
    "select",
    "slicing",
    "structure",
    "transforms",
    "tree_utils",
]
