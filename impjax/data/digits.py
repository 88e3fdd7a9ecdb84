"""scikit-learn's bundled 8x8 digits as an offline tfds dataset."""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """tfds builder ``sklearn_digits``: 1797 8x8 digits, stratified 80/20 split.

  Images are float32 ``(8, 8, 1)`` in [0, 1] (pixel / 16), labels 0..9, both
  splits in ``train_test_split(..., test_size=0.2, random_state=0,
  stratify=labels)`` order. Needs no download; writes array_record files.

  Defined outside a tfds builder package, so ``_info`` builds ``DatasetInfo``
  directly (``dataset_info_from_configs`` fails) and ``code_path`` is pinned to
  this file (tfds' own lookup imports the absent ``importlib_resources``).

  Example:
    >>> import tempfile
    >>> from impjax.data import prepare_digits
    >>> builder = SklearnDigits(data_dir=prepare_digits(tempfile.mkdtemp()))
    >>> len(builder.as_data_source(split="test"))
    360
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format="array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn load_digits(): 8x8 images scaled to [0, 1].",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0,
        stratify=digits.target)
    return {"train": self._generate_examples(x_train, y_train),
            "test": self._generate_examples(x_test, y_test)}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}
