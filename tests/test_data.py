"""Tests for impjax.data: the sklearn_digits tfds dataset and batching."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from impjax.data import batches, load_split, num_batches, prepare_digits

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return prepare_digits(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def reference():
  digits = load_digits()
  x_train, x_test, y_train, y_test = train_test_split(
      digits.images, digits.target, test_size=0.2, random_state=0,
      stratify=digits.target)
  return {"train": (x_train, y_train), "test": (x_test, y_test)}


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_equal_sklearn_reference(data_dir, reference, split):
  data = load_split("sklearn_digits", split, data_dir)
  images, labels = reference[split]
  assert data["image"].dtype == np.float32 and data["label"].dtype == np.int32
  np.testing.assert_array_equal(data["image"][..., 0],
                                (images / 16.0).astype(np.float32))
  np.testing.assert_array_equal(data["label"], labels)
  assert data["image"].min() == 0.0 and data["image"].max() == 1.0
  assert set(np.unique(data["label"])) == set(range(10))


def test_split_sizes(data_dir):
  n_train = len(load_split("sklearn_digits", "train", data_dir)["label"])
  n_test = len(load_split("sklearn_digits", "test", data_dir)["label"])
  assert n_train + n_test == 1797
  assert abs(n_test / 1797 - 0.2) < 0.005


@pytest.mark.slow  # a subprocess
def test_reads_back_in_fresh_process(data_dir, tmp_path):
  out = tmp_path / "test.npz"
  code = ("import sys, numpy as np; from impjax.data import load_split; "
          "np.savez(sys.argv[2], **load_split('sklearn_digits', 'test', sys.argv[1]))")
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  subprocess.run([sys.executable, "-c", code, data_dir, str(out)], env=env,
                 check=True, capture_output=True, timeout=120)
  fresh = np.load(out)
  here = load_split("sklearn_digits", "test", data_dir)
  np.testing.assert_array_equal(fresh["image"], here["image"])
  np.testing.assert_array_equal(fresh["label"], here["label"])


def test_prepare_is_idempotent(data_dir):
  def snapshot():
    root = pathlib.Path(data_dir, "sklearn_digits")
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}
  before = snapshot()
  assert any(p.name.startswith("sklearn_digits-train.array_record") for p in before)
  assert prepare_digits(data_dir) == data_dir
  assert snapshot() == before


def test_prepare_keeps_the_copy_of_a_process_that_finished_first(tmp_path, monkeypatch,
                                                                   reference):
  """The losing process of a concurrent preparation gets tfds' FileExistsError from its final
  rename: the dataset is in place, so it goes on; with no dataset there, the error stands."""
  from impjax.data import digits  # pylint: disable=g-import-not-at-top
  real = digits.SklearnDigits.download_and_prepare

  def lose_the_race(self, *args, **kwargs):
    real(self, *args, **kwargs)  # the other process's copy lands first
    raise FileExistsError("Destination .../sklearn_digits/1.0.0 already exists.")

  monkeypatch.setattr(digits.SklearnDigits, "download_and_prepare", lose_the_race)
  data_dir = str(tmp_path / "shared")
  assert prepare_digits(data_dir) == data_dir
  np.testing.assert_array_equal(load_split("sklearn_digits", "test", data_dir)["label"],
                                reference["test"][1])

  def fail(self, *args, **kwargs):
    raise FileExistsError("no dataset behind this")

  monkeypatch.setattr(digits.SklearnDigits, "download_and_prepare", fail)
  with pytest.raises(FileExistsError, match="no dataset behind this"):
    prepare_digits(str(tmp_path / "empty"))


class TinyBytes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Unregistered uint8 dataset with non-default keys, read back from files."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "pixels": tfds.features.Tensor(shape=(2, 3), dtype=np.uint8),
            "target": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {"pixels": np.full((2, 3), 50 * i, np.uint8), "target": i % 3}


def test_load_split_other_dataset_with_custom_keys(tmp_path):
  TinyBytes(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  data = load_split("tiny_bytes", "train", str(tmp_path),
                    image_key="pixels", label_key="target")
  assert data["image"].dtype == np.float32 and data["image"].shape == (5, 2, 3)
  np.testing.assert_allclose(data["image"][:, 0, 0], np.arange(5) * 50 / 255)
  np.testing.assert_array_equal(data["label"], [0, 1, 2, 0, 1])
  assert data["label"].dtype == np.int32


@pytest.mark.parametrize("name", ["no_such_dataset", "mnist"])
def test_unprepared_dataset_raises(tmp_path, name):
  with pytest.raises(FileNotFoundError, match=f"{name}.*not prepared"):
    load_split(name, "train", str(tmp_path))


@pytest.mark.parametrize("keys, missing", [
    ({"image_key": "pixels"}, "pixels"), ({"label_key": "target"}, "target")])
def test_missing_key_is_named(data_dir, keys, missing):
  with pytest.raises(ValueError, match=f"'{missing}'"):
    load_split("sklearn_digits", "test", data_dir, **keys)


def _data(n=103):
  return {"x": np.arange(n), "y": -np.arange(n)}


def test_num_batches():
  assert num_batches(103, 10) == 10
  assert num_batches(103, 10, drop_remainder=False) == 11
  assert num_batches(100, 10, drop_remainder=False) == 10


def test_batches_cover_each_example_once():
  out = list(batches(_data(), 10, seed=1, drop_remainder=False))
  assert len(out) == num_batches(103, 10, drop_remainder=False)
  assert [len(b["x"]) for b in out] == [10] * 10 + [3]
  xs = np.concatenate([b["x"] for b in out])
  np.testing.assert_array_equal(np.sort(xs), np.arange(103))
  assert not np.array_equal(xs, np.arange(103))  # Shuffled.
  for b in out:
    np.testing.assert_array_equal(b["y"], -b["x"])  # Rows stay paired.


def test_batches_drop_remainder_and_no_shuffle():
  out = [b["x"] for b in batches(_data(), 10, seed=1, shuffle=False)]
  np.testing.assert_array_equal(np.concatenate(out), np.arange(100))


def test_batches_deterministic_per_seed_and_epoch():
  def epoch_order(seed, epoch):
    return np.concatenate(
        [b["x"] for b in batches(_data(), 10, seed=seed, epoch=epoch)])
  np.testing.assert_array_equal(epoch_order(0, 0), epoch_order(0, 0))
  assert not np.array_equal(epoch_order(0, 0), epoch_order(0, 1))
  assert not np.array_equal(epoch_order(0, 0), epoch_order(1, 0))


def test_batches_process_slices_partition_global_batch():
  kwargs = dict(seed=3, epoch=2)
  global_ = list(batches(_data(), 10, **kwargs))
  p0 = list(batches(_data(), 10, process_index=0, process_count=2, **kwargs))
  p1 = list(batches(_data(), 10, process_index=1, process_count=2, **kwargs))
  assert len(global_) == len(p0) == len(p1) == 10
  for g, a, b in zip(global_, p0, p1):
    assert len(a["x"]) == len(b["x"]) == 5
    assert not set(a["x"]) & set(b["x"])
    np.testing.assert_array_equal(np.concatenate([a["x"], b["x"]]), g["x"])
    np.testing.assert_array_equal(b["y"], -b["x"])


def test_batches_invalid_arguments():
  with pytest.raises(ValueError, match="divisible"):
    next(batches(_data(), 10, seed=0, process_count=3))
  with pytest.raises(ValueError, match="drop_remainder"):
    next(batches(_data(), 10, seed=0, drop_remainder=False, process_count=2))
  with pytest.raises(ValueError, match="lengths"):
    next(batches({"x": np.arange(3), "y": np.arange(4)}, 2, seed=0))
