"""impjax: which parts of a JAX model matter, and acting on the answer.

Five pure stages — ``scores`` -> ``estimators`` -> ``groups`` -> ``select`` -> ``transforms`` —
plus ``schedules``, ``flax`` helpers and ``models``. The dataset (``impjax.data``), the main job
(``impjax.train``), checkpoints (``impjax.checkpoint``) and plots (``impjax.viz``) are imported
on demand, as they pull in tensorflow-datasets, orbax and matplotlib.

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
from impjax import models
from impjax import schedules
from impjax import scores
from impjax import select
from impjax import transforms
from impjax import tree_utils
from impjax import quantization
from impjax import pruning

__version__ = "0.1.0"

__all__ = ["estimators", "flax", "groups", "models", "schedules", "scores", "select", "transforms", "tree_utils", "quantization",
           "pruning"]
