"""Plots people would rather see than read: sparsity per layer, training curves, accuracy
against sparsity, importance heatmaps. Each function returns a matplotlib ``Figure`` and,
given ``path``, saves it as PNG.

Example:
  >>> from impjax import viz
  >>> fig = viz.sparsity_per_layer({"dense/kernel": 0.9, "head/kernel": 0.5, "global": 0.85})
  >>> len(fig.axes)
  1
"""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure
import numpy as np


def _figure(width: float, height: float):
  """A pyplot-free figure: works headless, and notebooks display it inline."""
  fig = Figure(figsize=(width, height))
  return fig, fig.subplots()


def _finish(fig, path: str | None):
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def sparsity_per_layer(report: dict[str, float], path: str | None = None):
  """Horizontal bars of the pruned fraction of each leaf (``global`` as a dashed line)."""
  layers = [k for k in report if k != "global"]
  fig, ax = _figure(6, 0.4 * len(layers) + 1.5)
  ax.barh(layers, [report[k] for k in layers], color="tab:blue")
  if "global" in report:
    ax.axvline(report["global"], color="k", linestyle="--", label=f"global {report['global']:.3f}")
    ax.legend(loc="lower right")
  ax.set_xlim(0, 1)
  ax.set_xlabel("fraction pruned")
  ax.invert_yaxis()
  return _finish(fig, path)


def training_curves(history: Sequence[dict], path: str | None = None):
  """Test accuracy and sparsity against step from the run's evaluation history."""
  steps = [h["step"] for h in history]
  fig, ax = _figure(6, 3.5)
  ax.plot(steps, [h["test_accuracy"] for h in history], "o-", color="tab:blue", label="accuracy")
  ax.set_xlabel("step")
  ax.set_ylabel("test accuracy", color="tab:blue")
  twin = ax.twinx()
  twin.plot(steps, [h["sparsity"] for h in history], "s--", color="tab:red", label="sparsity")
  twin.set_ylabel("sparsity", color="tab:red")
  twin.set_ylim(0, 1)
  return _finish(fig, path)


def accuracy_vs_sparsity(results: Sequence[dict], path: str | None = None,
                         dense_accuracy: float | None = None):
  """One line per criterion from ``{criterion, sparsity, accuracy}`` rows."""
  fig, ax = _figure(6, 4)
  for name in dict.fromkeys(r["criterion"] for r in results):
    rows = sorted((r["sparsity"], r["accuracy"]) for r in results if r["criterion"] == name)
    ax.plot(*zip(*rows), "o-", label=name)
  if dense_accuracy is not None:
    ax.axhline(dense_accuracy, color="k", linestyle=":", label="dense")
  ax.set_xlabel("sparsity")
  ax.set_ylabel("accuracy")
  ax.legend()
  return _finish(fig, path)


def importance_heatmap(importance: np.ndarray, path: str | None = None, title: str = ""):
  """A 2-D importance array (e.g. a kernel's scores) as a log-scaled heatmap."""
  values = np.log10(np.abs(np.asarray(importance, np.float64)).reshape(importance.shape[0], -1)
                    + 1e-12)
  fig, ax = _figure(5, 4)
  image = ax.imshow(values, aspect="auto", cmap="viridis")
  fig.colorbar(image, ax=ax, label="log10 importance")
  ax.set_xlabel("output unit")
  ax.set_ylabel("input unit")
  ax.set_title(title)
  return _finish(fig, path)
