"""A classification task where model width matters, built offline from a seed.

The digits saturate narrow models: an MLP with 64 hidden units per layer already matches one
with 256 on its 360 test examples, so width-dependent claims are decided there by one or two
examples. :func:`gaussian_clusters` draws a harder task with scikit-learn's
``make_classification`` (Guyon 2003, the generator behind the NIPS 2003 feature selection
challenge): each class is a union of Gaussian clusters on the vertices of a hypercube in an
informative subspace, so accuracy keeps rising with hidden width well past 64 units, and its
test split is large enough (10,000 by default) to resolve differences of a few tenths of a
point.

Example:
  >>> from impjax.data import synthetic
  >>> train, test = synthetic.gaussian_clusters(num_train=100, num_test=50)
  >>> train["image"].shape, test["label"].shape, train["image"].dtype.name
  ((100, 40), (50,), 'float32')
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification


def gaussian_clusters(num_train: int = 20000, num_test: int = 10000, *, num_features: int = 40,
                      num_informative: int = 30, num_classes: int = 10,
                      clusters_per_class: int = 4, class_sep: float = 1.5, seed: int = 0
                      ) -> tuple[dict, dict]:
  """``(train, test)`` dicts of ``image`` (float32 ``(n, num_features)``) and ``label``
  (int32), the first ``num_train`` and the next ``num_test`` examples of one
  ``make_classification`` draw (``num_informative`` informative features, the rest noise).

  Example:
    >>> train, test = gaussian_clusters(num_train=100, num_test=50, num_classes=3)
    >>> sorted(set(train["label"].tolist()))
    [0, 1, 2]
  """
  if num_train < 1 or num_test < 1:
    raise ValueError(f"num_train and num_test must be >= 1, got {num_train}, {num_test}.")
  x, y = make_classification(
      n_samples=num_train + num_test, n_features=num_features,
      n_informative=num_informative, n_redundant=0, n_classes=num_classes,
      n_clusters_per_class=clusters_per_class, class_sep=class_sep, random_state=seed)
  x, y = x.astype(np.float32), y.astype(np.int32)
  return ({"image": x[:num_train], "label": y[:num_train]},
          {"image": x[num_train:], "label": y[num_train:]})
