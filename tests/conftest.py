"""Fixtures and hooks: a per-session data directory, seeded parameter and gradient trees, and
the ``slow`` marks that the test files do not carry themselves: whole files, doctests, and the
tests measured over 1.5 s, listed in tests/slow_tests.txt (helpers: tests/helpers.py)."""

import atexit
import functools
import os
import pathlib
import shutil
import tempfile

# Each test session (each pytest-xdist worker) prepares the datasets in its own directory, set
# before impjax is imported: parallel workers never race on one tfds directory, and the tests
# never touch the user's data directory.
os.environ["IMPJAX_DATA_DIR"] = tempfile.mkdtemp(prefix="impjax_test_data_")
atexit.register(functools.partial(shutil.rmtree, os.environ["IMPJAX_DATA_DIR"], True))
# Compiling, not running, takes most of the suite's time on CPU: the tests, and every process they
# start (inheriting the environment), compile with XLA's backend optimizations off and without the
# CPU fusion emitters (measured on test_select, test_unit_taylor and test_zoo, cold, -n 2: 193 s
# with the first two flags, 136.5 s with all three). The programs are the same; only their
# machine code is less optimized.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.helpers import random_tree  # pylint: disable=g-import-not-at-top,wrong-import-position

# Slow items marked here, by file (relative to the repository root): every test of these files,
# and the doctests (``--doctest-modules``) that load the pretrained MiniLM or run the main job.
SLOW_FILES = ("tests/test_notebooks.py",)
SLOW_DOCTESTS = (
    "impjax.models.minilm.loading",  # the module docstring loads the pretrained model
    "impjax.models.minilm.loading.load",
    "impjax.models.minilm.loading.load_pretrained",
    "impjax.models.minilm.loading.tokenize",
    "impjax.models.minilm.loading.token_batches",
    "impjax.models.minilm.loading.embed_texts",
    "launch.train",  # the module docstring runs the main job
)


def pytest_configure(config):
  """Compiled XLA programs persist in pytest's cache directory (``.pytest_cache``) between runs,
  shared by the xdist workers: a later run loads the same executables instead of compiling them
  again (several times faster on CPU). ``--cache-clear`` or ``-p no:cacheprovider`` runs cold;
  subprocesses (launch/main.py, the notebooks, the 8-device run) never use it."""
  cache = getattr(config, "cache", None)
  if cache is not None:
    jax.config.update("jax_compilation_cache_dir", str(cache.mkdir("jax_compilation_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _slow_test_ids() -> set[str]:
  """The node ids of ``tests/slow_tests.txt`` (the tests measured over 1.5 s)."""
  lines = pathlib.Path(__file__).with_name("slow_tests.txt").read_text().splitlines()
  return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
  return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def pytest_collection_modifyitems(config, items):
  slow_ids, files = _slow_test_ids(), set()
  for item in items:
    path = _relative(item.path, config.rootpath)
    files.add(path)
    if (path in SLOW_FILES or item.nodeid in slow_ids
        or (isinstance(item, pytest.DoctestItem) and item.name in SLOW_DOCTESTS)):
      item.add_marker(pytest.mark.slow)
  # A file collected whole must hold every id listed for it (not one picked by node id).
  picked = {_relative(pathlib.Path(arg.split("::")[0]).resolve(), config.rootpath)
            for arg in config.args if "::" in arg}
  stale = sorted(i for i in slow_ids - {item.nodeid for item in items}
                 if i.split("::")[0] in files - picked)
  if stale:
    raise pytest.UsageError(f"tests/slow_tests.txt names tests that were not collected: {stale}")
  # The long items run first (the notebooks first of all): pytest-xdist hands the rest to
  # whichever worker is free, so both workers end on short tests instead of one waiting on a
  # notebook started last.
  items.sort(key=lambda item: (item.name.startswith("test_executes") is False,
                               item.get_closest_marker("slow") is None))


@pytest.fixture
def params():
  return random_tree(0)


@pytest.fixture
def grads():
  return random_tree(1)
