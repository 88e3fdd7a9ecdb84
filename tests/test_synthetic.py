"""Tests for impjax.data.synthetic: the Gaussian-clusters classification task."""

import numpy as np
import pytest
from sklearn.datasets import make_classification

from impjax.data import synthetic


def test_splits_are_consecutive_rows_of_one_draw():
  train, test = synthetic.gaussian_clusters(num_train=300, num_test=200, num_features=12,
                                            num_informative=6, num_classes=4,
                                            clusters_per_class=2, seed=3)
  x, y = make_classification(n_samples=500, n_features=12, n_informative=6, n_redundant=0,
                             n_classes=4, n_clusters_per_class=2, class_sep=1.5,
                             random_state=3)
  np.testing.assert_array_equal(train["image"], x[:300].astype(np.float32))
  np.testing.assert_array_equal(test["image"], x[300:].astype(np.float32))
  np.testing.assert_array_equal(np.concatenate([train["label"], test["label"]]), y)
  assert train["image"].dtype == np.float32 and train["label"].dtype == np.int32


def test_seeded_and_balanced():
  a, _ = synthetic.gaussian_clusters(num_train=1000, num_test=10, seed=0)
  b, _ = synthetic.gaussian_clusters(num_train=1000, num_test=10, seed=0)
  c, _ = synthetic.gaussian_clusters(num_train=1000, num_test=10, seed=1)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.allclose(a["image"], c["image"])
  counts = np.bincount(a["label"], minlength=10)
  assert counts.min() >= 80 and counts.max() <= 120  # 100 per class, up to flipped labels


@pytest.mark.parametrize("sizes", [(0, 10), (10, 0)])
def test_empty_split_raises(sizes):
  with pytest.raises(ValueError, match="num_train and num_test"):
    synthetic.gaussian_clusters(*sizes)
