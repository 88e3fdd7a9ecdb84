"""Datasets and input pipelines."""

from impjax.data.digits import SklearnDigits as SklearnDigits
from impjax.data.input_pipeline import DEFAULT_DATA_DIR as DEFAULT_DATA_DIR
from impjax.data.input_pipeline import batches as batches
from impjax.data.input_pipeline import batches_from_step as batches_from_step
from impjax.data.input_pipeline import load_split as load_split
from impjax.data.input_pipeline import num_batches as num_batches
from impjax.data.input_pipeline import prepare_digits as prepare_digits

__all__ = [
    "DEFAULT_DATA_DIR",
    "SklearnDigits",
    "batches",
    "batches_from_step",
    "load_split",
    "num_batches",
    "prepare_digits",
]
