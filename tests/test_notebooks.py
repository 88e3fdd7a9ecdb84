"""Executes every notebook under notebooks/ headless and checks how it is stored.

Each notebook runs top to bottom in a fresh ``python3`` kernel, in a temporary working
directory, and fails on the first cell error. The kernel is pinned to this interpreter
(``sys.executable``) through a kernelspec written into a temporary ``JUPYTER_PATH``, so the
notebook imports the same installed impjax that the tests do.
"""

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from ipykernel import kernelspec  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _read(path):
  return nbformat.read(path, as_version=4)


def test_there_are_notebooks():
  assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.fixture(scope="module")
def python3_here(tmp_path_factory):
  """A ``python3`` kernelspec that launches this interpreter, first on ``JUPYTER_PATH``."""
  prefix = tmp_path_factory.mktemp("jupyter_prefix")
  kernelspec.install(kernel_name="python3", prefix=str(prefix))
  data_dir = prefix / "share" / "jupyter"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JUPYTER_PATH", str(data_dir))
    from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    yield


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_clean_with_kernelspec(path):
  nb = _read(path)
  nbformat.validate(nb)
  assert nb.metadata.get("kernelspec", {}).get("name") == "python3", nb.metadata
  dirty = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
  assert not dirty, f"{path.name}: code cells {dirty} are stored with outputs; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executes(path, python3_here, tmp_path, monkeypatch):
  del python3_here
  # The kernel inherits the environment: keep prepared datasets out of the home directory.
  monkeypatch.setenv("IMPJAX_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
  workdir = tmp_path / "cwd"
  workdir.mkdir()
  nb = _read(path)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(workdir)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors, errors
