"""Layer-sequential one-shot pruning of an encoder: magnitude, Wanda and SparseGPT.

Layers are pruned in order. Layer ``i`` is calibrated on the outputs of layers ``0..i-1``
*already pruned* (Wanda's and SparseGPT's sequential scheme): its Linear inputs are captured
(``impjax.flax.capture``) over the calibration batches, every Linear kernel of the layer is
pruned, and the pruned layer then produces the next layer's inputs. Padding tokens never
enter a statistic.

* ``magnitude``: lowest ``|W|`` per layer (the Wanda paper's baseline, layer-wise comparison).
* ``wanda``: lowest ``|W_ij| * ||X_j||`` within each output (each kernel column).
* ``ria``: lowest RIA score (:func:`impjax.scores.ria`: relative importance times
  ``||X_j||^0.5``) within each output.
* ``sparsegpt``: OBS pruning with weight updates from ``H = E[x x^T]``
  (:func:`impjax.pruning.sparsegpt`).

Sparsity is unstructured (``sparsity``) or N:M along the input axis (``n_of_m=(n, m)``).
The model needs ``embeddings(ids)`` and ``layers`` called as ``layer(x, mask)`` whose Linear
sub-modules tap their ``inputs`` (as :class:`impjax.models.MiniLM` does).

References: Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
Models" (Wanda); Frantar & Alistarh 2023, "SparseGPT"; Han et al. 2015 (magnitude).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from impjax.models import minilm
  >>> c = minilm.MiniLMConfig(vocab_size=20, hidden_size=8, num_heads=(2, 2), head_dim=4,
  ...                         intermediate_sizes=(16, 16), max_position=8)
  >>> model = minilm.MiniLM(c, rngs=nnx.Rngs(0))
  >>> batch = {"ids": jnp.arange(16).reshape(2, 8), "mask": jnp.ones((2, 8), jnp.int32)}
  >>> pruned, masks = prune_layerwise(model, [batch], "wanda", sparsity=0.5, progress=False)
  >>> sorted(masks)[:2], float(masks["layers/0/query/kernel"].mean())
  (['layers/0/attention_out/kernel', 'layers/0/intermediate/kernel'], 0.5)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable

from flax import nnx
import jax
import jax.numpy as jnp

from impjax import scores
from impjax import select
from impjax import tree_utils
from impjax.flax import capture
from impjax.pruning.sparsegpt import sparsegpt

METHODS = ("magnitude", "wanda", "ria", "sparsegpt")


def linear_paths(layer: nnx.Module) -> list[str]:
  """Path strings of every ``nnx.Linear`` inside ``layer``, in graph order.

  Example:
    >>> linear_paths(nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0))))
    ['layers/0']
  """
  return ["/".join(map(str, path)) for path, module in nnx.iter_modules(layer)
          if isinstance(module, nnx.Linear)]


@dataclasses.dataclass(frozen=True)
class LinearInputs:
  """Observer for :func:`impjax.flax.capture.accumulate_sums`: sum statistics of the inputs of
  a layer's Linear modules (``token_gram`` for sparsegpt, else ``token_sums``).

  Hashable, so every layer with the same graph shares one compiled calibration step.

  Example:
    >>> from impjax.models import minilm
    >>> c = minilm.MiniLMConfig(vocab_size=5, hidden_size=4, num_heads=(1,), head_dim=4,
    ...                         intermediate_sizes=(8,), max_position=3)
    >>> graphdef, state = nnx.split(minilm.MiniLM(c, rngs=nnx.Rngs(0)).layers[0])
    >>> observe = LinearInputs(graphdef, ("query",), gram=True)
    >>> observe(state, (jnp.ones((1, 3, 4)), jnp.ones((1, 3))))["query"]["gram"].tolist()[0]
    [3.0, 3.0, 3.0, 3.0]
  """
  graphdef: Any
  paths: tuple[str, ...]
  gram: bool

  def __call__(self, state, batch):
    x, mask = batch
    _, acts = capture.intermediates(lambda l: l(x, mask), nnx.merge(self.graphdef, state))
    stat = scores.token_gram if self.gram else scores.token_sums
    return {p: stat(acts[f"{p}/inputs"], mask) for p in self.paths}


@functools.partial(jax.jit, static_argnames=("method", "sparsity", "n_of_m", "blocksize",
                                             "damp"))
def prune_kernel(method: str, kernel: jax.Array, stats: Any, *, sparsity: float = 0.0,
                 n_of_m: tuple[int, int] | None = None, blocksize: int = 128,
                 damp: float = 0.01) -> tuple[jax.Array, jax.Array]:
  """``(new_kernel, keep_mask)`` of one Flax kernel ``(in, out)`` by ``method``.

  ``stats`` are the means of the kernel's input statistics (``E[x^2]`` as ``"sq"`` for wanda
  and ria, ``E[x x^T]`` as ``"gram"`` for sparsegpt; unused by magnitude).

  Example:
    >>> k = jnp.array([[1.0, -4.0], [2.0, 3.0]])
    >>> prune_kernel("wanda", k, {"sq": jnp.array([9.0, 1.0])}, sparsity=0.5)[1].tolist()
    [[True, True], [False, False]]
  """
  if method == "sparsegpt":
    n, m = n_of_m or (0, 0)
    return sparsegpt(kernel, stats["gram"], sparsity=sparsity, n=n, m=m, blocksize=blocksize,
                     damp=damp)
  if method == "magnitude":
    importance = jnp.abs(kernel)
  elif method == "wanda":
    importance = scores.wanda(kernel, jnp.sqrt(stats["sq"]))
  elif method == "ria":
    importance = scores.ria(kernel, jnp.sqrt(stats["sq"]))
  else:
    raise ValueError(f"Unknown layer-wise pruning method {method!r}. Known: {METHODS}.")
  if n_of_m is not None:
    keep = select.n_of_m_leaf(importance, *n_of_m, axis=0)
  elif method in ("wanda", "ria"):  # within each output: keep the top inputs of every column
    n_in = kernel.shape[0]
    keep = select.n_of_m_leaf(importance, n_in - select.num_to_prune(sparsity, n_in), n_in, 0)
  else:
    keep = select.topk(importance, sparsity)
  return jnp.where(keep, kernel, 0.0), keep


def prune_layerwise(model: nnx.Module, batches: Iterable[dict], method: str, *,
                    sparsity: float = 0.0, n_of_m: tuple[int, int] | None = None,
                    blocksize: int = 128, damp: float = 0.01, progress: bool = True
                    ) -> tuple[nnx.Module, dict[str, jax.Array]]:
  """Prunes every Linear kernel of every layer, layer after layer; ``model`` is not changed.

  Args:
    model: an encoder with ``embeddings`` and ``layers`` (e.g. :class:`MiniLM`).
    batches: calibration batches ``{"ids", "mask"}`` (kept in memory as hidden states).
    method: ``magnitude``, ``wanda``, ``ria`` or ``sparsegpt``.
    sparsity: unstructured fraction pruned per kernel (per output for wanda and ria).
    n_of_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs instead.
    blocksize: SparseGPT's block size.
    damp: SparseGPT's Hessian dampening.
    progress: show a progress bar per layer's calibration pass.

  Returns:
    ``(pruned_model, keep_masks)`` with masks keyed by kernel path (``layers/0/query/kernel``).

  Example:
    >>> from impjax.models import minilm
    >>> c = minilm.MiniLMConfig(vocab_size=9, hidden_size=4, num_heads=(1,), head_dim=4,
    ...                         intermediate_sizes=(8,), max_position=4)
    >>> batch = {"ids": jnp.array([[1, 2, 3, 4]]), "mask": jnp.ones((1, 4), jnp.int32)}
    >>> _, masks = prune_layerwise(minilm.MiniLM(c, rngs=nnx.Rngs(0)), [batch], "magnitude",
    ...                            n_of_m=(2, 4), progress=False)
    >>> int(masks["layers/0/output/kernel"].sum())  # 2 of every 4 of its 8 x 4 weights
    16
  """
  if method not in METHODS:
    raise ValueError(f"Unknown layer-wise pruning method {method!r}. Known: {METHODS}.")
  if n_of_m is None:
    tree_utils.check_fraction(sparsity, what="sparsity")
  model = nnx.clone(model)
  embed_def, embed_state = nnx.split(model.embeddings)
  embed = jax.jit(lambda state, ids: nnx.merge(embed_def, state)(ids))
  hidden = [(embed(embed_state, b["ids"]), jnp.asarray(b["mask"])) for b in batches]
  masks = {}
  for i, layer in enumerate(model.layers):
    graphdef, state = nnx.split(layer)
    paths = tuple(linear_paths(layer))
    observe = LinearInputs(graphdef, paths, gram=method == "sparsegpt")
    stats = (scores.means(capture.accumulate_sums(observe, state, hidden, total=len(hidden),
                                            progress=progress))
             if method != "magnitude" else dict.fromkeys(paths))
    for p in paths:
      linear = tree_utils.get_path(layer, p)
      kernel, keep = prune_kernel(method, linear.kernel[...], stats[p], sparsity=sparsity,
                                  n_of_m=n_of_m, blocksize=blocksize, damp=damp)
      linear.kernel[...] = kernel
      masks[f"layers/{i}/{p}/kernel"] = keep
    graphdef, state = nnx.split(layer)
    hidden = [(_run_layer(graphdef, state, x, mask), mask) for x, mask in hidden]
  return model, masks


@jax.jit(static_argnums=0)
def _run_layer(graphdef, state, x, mask):
  return nnx.merge(graphdef, state)(x, mask)
