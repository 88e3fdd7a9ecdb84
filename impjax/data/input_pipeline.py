"""Loading tfds datasets into memory and batching them deterministically."""

from collections.abc import Iterator
import contextlib
import io
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from impjax.data.digits import SklearnDigits

DEFAULT_DATA_DIR = os.environ.get(
    "IMPJAX_DATA_DIR", os.path.expanduser("~/.cache/impjax/tensorflow_datasets"))


def prepare_digits(data_dir: str | None = None) -> str:
  """Builds ``sklearn_digits`` into ``data_dir`` unless it is already there.

  tfds' progress prints go to the log instead of standard output. Several processes may
  prepare the same directory at once (every process of a multi-process launch does): tfds
  builds each in its own temporary directory, and a process whose finished copy finds the
  dataset already in place keeps that one.

  Args:
    data_dir: tfds data directory; defaults to ``DEFAULT_DATA_DIR``.

  Returns:
    The data directory used.

  Example:
    >>> import tempfile
    >>> data_dir = tempfile.mkdtemp()
    >>> prepare_digits(data_dir) == data_dir
    True
  """
  data_dir = os.fspath(data_dir or DEFAULT_DATA_DIR)
  builder = SklearnDigits(data_dir=data_dir)
  if not builder.is_prepared():
    printed = io.StringIO()
    try:
      with contextlib.redirect_stdout(printed):
        builder.download_and_prepare()
    except FileExistsError:  # another process moved its copy into place first
      if not SklearnDigits(data_dir=data_dir).is_prepared():
        raise
    logging.info("Prepared sklearn_digits in %s. %s", data_dir, printed.getvalue().strip())
  return data_dir


def load_split(name: str, split: str, data_dir: str | None = None, *,
               image_key: str = "image",
               label_key: str = "label") -> dict[str, np.ndarray]:
  """Reads a whole prepared array_record tfds split into memory, in order.

  ``sklearn_digits`` is prepared on demand; any other dataset must already be
  prepared in ``data_dir`` with ``file_format="array_record"``.

  Args:
    name: tfds dataset name, e.g. ``"sklearn_digits"`` or ``"mnist:3.0.1"``.
    split: tfds split, e.g. ``"train"`` or ``"test[:10%]"``.
    data_dir: tfds data directory; defaults to ``DEFAULT_DATA_DIR``.
    image_key: feature holding the images.
    label_key: feature holding the integer labels.

  Returns:
    ``{"image": float32 [N, ...], "label": int32 [N]}``; integer images are
    divided by 255, float images keep their values.

  Raises:
    FileNotFoundError: the dataset is not prepared in ``data_dir``.
    ValueError: ``image_key`` or ``label_key`` is not a feature.

  Example:
    >>> import tempfile
    >>> data = load_split("sklearn_digits", "test", tempfile.mkdtemp())
    >>> data["image"].shape, data["label"].dtype
    ((360, 8, 8, 1), dtype('int32'))
  """
  data_dir = os.fspath(data_dir or DEFAULT_DATA_DIR)
  if name == "sklearn_digits":
    prepare_digits(data_dir)
  try:
    prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
  except tfds.core.registered.DatasetNotFoundError:
    prepared = False
  if not prepared:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in {data_dir!r}; build it "
        "there first with download_and_prepare(file_format='array_record').")
  source = tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  features = source.dataset_info.features
  for role, key in (("image_key", image_key), ("label_key", label_key)):
    if key not in features:
      raise ValueError(f"{role}={key!r} is not a feature of {name!r}; "
                       f"available: {sorted(features.keys())}.")
  records = source.__getitems__(range(len(source)))
  images = np.stack([r[image_key] for r in records])
  if np.issubdtype(images.dtype, np.integer):
    images = images / 255.0
  labels = np.array([r[label_key] for r in records])
  return {"image": images.astype(np.float32), "label": labels.astype(np.int32)}


def num_batches(n_examples: int, batch_size: int,
                drop_remainder: bool = True) -> int:
  """Number of (global) batches in one epoch of ``n_examples``.

  Example:
    >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=False)
    (2, 3)
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  return n_examples // batch_size if drop_remainder else -(-n_examples // batch_size)


def batches(data: dict[str, np.ndarray], batch_size: int, *, seed: int,
            epoch: int = 0, shuffle: bool = True, drop_remainder: bool = True,
            process_index: int = 0,
            process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Yields one epoch of batches of ``data``, shuffled by ``(seed, epoch)``.

  All processes draw the same permutation and the same global batches of
  ``batch_size``; each yields its contiguous ``batch_size // process_count``
  slice of every global batch.

  Args:
    data: arrays sharing their leading dimension.
    batch_size: global batch size, divisible by ``process_count``.
    seed: shuffling seed.
    epoch: epoch number; each epoch gets its own permutation.
    shuffle: if False, keep the source order.
    drop_remainder: drop the last partial batch (required if
      ``process_count > 1``).
    process_index: index of this process in ``range(process_count)``.
    process_count: number of processes sharing each global batch.

  Yields:
    Dicts with the keys of ``data`` and this process's rows of a batch.

  Example:
    >>> data = {"x": np.arange(10)}
    >>> [b["x"].tolist() for b in batches(data, 4, seed=0, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7]]
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by "
                     f"process_count={process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"range({process_count}).")
  if not drop_remainder and process_count > 1:
    raise ValueError("drop_remainder=False needs process_count == 1.")
  sizes = {len(v) for v in data.values()}
  if len(sizes) != 1:
    raise ValueError(f"arrays in data have different lengths: {sorted(sizes)}.")
  n = sizes.pop()
  order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
           else np.arange(n))
  local = batch_size // process_count
  for b in range(num_batches(n, batch_size, drop_remainder)):
    lo = b * batch_size + process_index * local
    yield {k: v[order[lo:lo + local]] for k, v in data.items()}


def batches_from_step(data: dict[str, np.ndarray], batch_size: int, *, seed: int,
                      start_step: int = 0, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches, epoch after epoch, starting at global step ``start_step``.

  Step ``s`` always yields the same batch, so a run resumed at ``s`` sees exactly the data
  an uninterrupted run would.

  Example:
    >>> data = {"x": np.arange(10)}
    >>> stream = batches_from_step(data, 4, seed=0, start_step=1)
    >>> next(stream)["x"].tolist() == list(batches(data, 4, seed=0))[1]["x"].tolist()
    True
  """
  sizes = {len(v) for v in data.values()}
  per_epoch = num_batches(max(sizes), batch_size)
  if per_epoch == 0:
    raise ValueError(f"batch_size={batch_size} exceeds the {max(sizes)} examples.")
  epoch, skip = divmod(start_step, per_epoch)
  while True:
    for i, batch in enumerate(batches(data, batch_size, seed=seed, epoch=epoch,
                                      process_index=process_index,
                                      process_count=process_count)):
      if i >= skip:
        yield batch
    epoch, skip = epoch + 1, 0
