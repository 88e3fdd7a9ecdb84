"""Axis identities of a traced computation, merged by union-find.

Every axis of every value of a jaxpr is a node with a size. Two nodes are merged when they
must share one index space (pruning index ``i`` of one prunes index ``i`` of the other). A
node may be *composite*: the row-major product of ordered factor nodes (``(heads, head_dim)``
merged into one feature axis, or ``heads = (kv_heads, groups)`` in grouped-query attention);
merging two composites aligns their factors. Classes carry flags (``input``, ``opaque``,
``attn_batch`` ...) that say what the computation did with them.

Reference: Fang et al. 2023, "DepGraph: Towards Any Structural Pruning" (dependency groups),
done here on axes of a jaxpr.

Example:
  >>> g = AxisGraph()
  >>> a, b, c = g.new(4), g.new(4), g.new(8)
  >>> g.union(a, b); g.find(a) == g.find(b)
  True
  >>> g.compose(c, (g.new(2), a)); [g.size(f) for f in g.factors(c)]
  [2, 4]
"""

from __future__ import annotations

import math


class AxisGraph:
  """Union-find over axis nodes with sizes, flags and composite factorizations."""

  def __init__(self):
    self._parent: list[int] = []
    self._size: list[int] = []
    self._flags: dict[int, set[str]] = {}
    self._factors: dict[int, tuple[int, ...]] = {}

  def new(self, size: int, *flags: str) -> int:
    """A fresh node of ``size``."""
    self._parent.append(len(self._parent))
    self._size.append(int(size))
    node = len(self._parent) - 1
    if flags:
      self._flags[node] = set(flags)
    return node

  def find(self, node: int) -> int:
    """The class representative of ``node``."""
    root = node
    while self._parent[root] != root:
      root = self._parent[root]
    while self._parent[node] != root:
      self._parent[node], node = root, self._parent[node]
    return root

  def size(self, node: int) -> int:
    return self._size[node]

  def flags(self, node: int) -> frozenset[str]:
    """Flags of ``node``'s class."""
    return frozenset(self._flags.get(self.find(node), ()))

  def flag(self, node: int, *flags: str) -> None:
    self._flags.setdefault(self.find(node), set()).update(flags)

  def factors(self, node: int) -> tuple[int, ...]:
    """Ordered factor nodes of ``node``'s class (``()`` when it is not composite)."""
    return self._factors.get(self.find(node), ())

  def union(self, a: int, b: int) -> None:
    """Merges the classes of ``a`` and ``b`` (equal sizes), aligning their factorizations."""
    pending = [(a, b)]
    while pending:
      a, b = pending.pop()
      ra, rb = self.find(a), self.find(b)
      if ra == rb:
        continue
      if self._size[ra] != self._size[rb]:
        self.flag(ra, "opaque")
        self.flag(rb, "opaque")
        continue
      self._parent[rb] = ra
      if rb in self._flags:
        self._flags.setdefault(ra, set()).update(self._flags.pop(rb))
      fa, fb = self._factors.get(ra), self._factors.pop(rb, None)
      if fb is None:
        continue
      if fa is None:
        self._factors[ra] = fb
        continue
      pending.extend(self._align(ra, fa, fb))

  def compose(self, node: int, factors: tuple[int, ...]) -> None:
    """Declares ``node`` the row-major product of ``factors`` (size-1 factors dropped)."""
    factors = tuple(f for f in factors if self._size[f] != 1)
    if len(factors) < 2:
      if factors:
        self.union(node, factors[0])
      return
    if math.prod(self._size[f] for f in factors) != self._size[node]:
      raise ValueError("factor sizes do not multiply to the node's size")
    root = self.find(node)
    old = self._factors.get(root)
    if old is None:
      self._factors[root] = factors
    else:
      for a, b in self._align(root, old, factors):
        self.union(a, b)

  def _align(self, root: int, fa: tuple[int, ...], fb: tuple[int, ...]) -> list[tuple[int, int]]:
    """Pairs of factors to merge when ``root`` is both ``fa`` and ``fb``: runs of equal
    products correspond; a run of one against several makes the one composite; runs of
    several against several cannot be matched and make them all opaque."""
    pairs, i, j = [], 0, 0
    while i < len(fa) and j < len(fb):
      ri, rj = [fa[i]], [fb[j]]
      pi, pj = self._size[fa[i]], self._size[fb[j]]
      i, j = i + 1, j + 1
      while pi != pj:
        if pi < pj:
          ri.append(fa[i]); pi *= self._size[fa[i]]; i += 1
        else:
          rj.append(fb[j]); pj *= self._size[fb[j]]; j += 1
      if len(ri) == 1 and len(rj) == 1:
        pairs.append((ri[0], rj[0]))
      elif len(ri) == 1:
        self.compose(ri[0], tuple(rj))
      elif len(rj) == 1:
        self.compose(rj[0], tuple(ri))
      else:
        for f in ri + rj:
          self.flag(f, "opaque")
    self._factors[root] = fa
    return pairs

  def classes(self) -> set[int]:
    return {self.find(n) for n in range(len(self._parent))}
