"""English text built from what Python ships: sentences and a retrieval task, split disjointly.

The source is ``pydoc_data.topics`` (the Python language reference pages behind ``help()``,
part of the standard library, so nothing is downloaded). Each topic page is cut into prose
paragraphs (code blocks, grammar rules, headings and tables are dropped) and paragraphs into
sentences. Topics alternate between the splits in sorted order (even positions
``evaluation``, odd ``calibration``), so calibration and evaluation text never share a page,
and a sentence that occurs in both is kept in calibration only. The exact text follows the
running Python version (its reference pages).

The retrieval task: for every paragraph of at least two sentences, the query is its first
sentence and the passage the rest of the paragraph; a model retrieves, for each query, the
most cosine-similar passage among all passages of the split (top-1 accuracy).

A second, larger source, ``source="docstrings"``: the prose of the standard library's
docstrings, read from its source files with ``ast`` (nothing is imported). Files alternate
between the splits in sorted path order as the topics do, and no sentence of the reference
pages is kept. On Python 3.11 its calibration split holds about 6,000 sentences (far more than
the reference pages' 681) and its evaluation split about 1,000 retrieval pairs (against 228),
enough to resolve differences of a point in retrieval accuracy.

Reference: the evaluation style of Sentence-BERT (Reimers & Gurevych 2019) and the
calibration/evaluation separation of Wanda and SparseGPT (calibration on other text).

Example:
  >>> from impjax.data import text
  >>> cal, ev = text.sentences("calibration"), text.sentences("evaluation")
  >>> len(cal) > 500 and len(ev) > 500 and not set(cal) & set(ev)
  True
"""

from __future__ import annotations

import ast
import functools
import pathlib
import re
import sysconfig


SPLITS = ("calibration", "evaluation")
SOURCES = ("reference", "docstrings")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"])")
_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")
_CODE = re.compile(r">>>|::=| = |[\[\]{}]|\|")


def _check(split: str, source: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown text split {split!r}. Known: {SPLITS}.")
  if source not in SOURCES:
    raise ValueError(f"Unknown text source {source!r}. Known: {SOURCES}.")


def prose_paragraphs(page: str) -> list[str]:
  """Prose paragraphs of one reference page; headings, code, grammar and tables are dropped.

  A block (between blank lines) is prose when its joined, dedented text ends like a
  sentence, holds no code markers (``>>>``, ``::=``, ``=``, brackets) and is mostly letters.

  Example:
    >>> prose_paragraphs("Title\\n*****\\n\\nSome text\\nwraps here.\\n\\n   x = f(1)\\n")
    ['Some text wraps here.']
  """
  out = []
  for block in re.split(r"\n\s*\n", page):
    lines = [l.strip() for l in block.split("\n") if l.strip()]
    if not lines or (len(lines) >= 2 and _HEADING_RULE.match(lines[-1])):
      continue
    paragraph = " ".join(lines).removeprefix("* ").strip()
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    if (paragraph.endswith((".", "?", "!")) and not _CODE.search(paragraph)
        and letters >= 0.9 * len(paragraph)):
      out.append(paragraph)
  return out


def split_sentences(paragraph: str, min_words: int = 5, max_words: int = 40) -> list[str]:
  """Sentences of a paragraph with ``min_words`` to ``max_words`` words ending in ``.?!``.

  Example:
    >>> split_sentences("This one is long enough. Too short. And this is another sentence!")
    ['This one is long enough.', 'And this is another sentence!']
  """
  out = []
  for s in _SENTENCE_END.split(paragraph):
    s = s.strip()
    if min_words <= len(s.split()) <= max_words and s.endswith((".", "?", "!")):
      out.append(s)
  return out


def _unseen_sentences(paragraph: str, seen: set[str]) -> tuple[str, ...]:
  """The sentences of ``paragraph`` not in ``seen``, which then holds them too."""
  sents = tuple(s for s in split_sentences(paragraph) if s not in seen)
  seen.update(sents)
  return sents


@functools.cache
def _reference_paragraphs(split: str) -> tuple[tuple[str, ...], ...]:
  """Sentence tuples per paragraph; evaluation drops any sentence calibration also has."""
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top
  names = sorted(topics)
  wanted = [n for i, n in enumerate(names) if (i % 2 == 0) == (split == "evaluation")]
  seen = set()
  if split == "evaluation":
    seen.update(s for p in _reference_paragraphs("calibration") for s in p)
  out = []
  for name in wanted:
    for paragraph in prose_paragraphs(topics[name]):
      if sents := _unseen_sentences(paragraph, seen):
        out.append(sents)
  return tuple(out)


@functools.cache
def _docstring_paragraphs() -> dict[str, tuple[tuple[str, ...], ...]]:
  """Sentence tuples per docstring paragraph of each split; a sentence is kept once, in the
  first place it occurs, and never when a reference page has it.

  Every ``.py`` file under the standard library directory (test packages, ``idlelib`` and
  installed packages excluded) is parsed with ``ast``; files that do not parse are skipped.
  The files alternate between the splits in sorted path order (even positions evaluation).
  """
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  skip = {"test", "tests", "idlelib", "site-packages", "dist-packages"}
  seen = {s for split in SPLITS for p in _reference_paragraphs(split) for s in p}
  out = {split: [] for split in SPLITS}
  paths = [p for p in sorted(root.rglob("*.py")) if not skip & set(p.relative_to(root).parts)]
  for i, path in enumerate(paths):
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        for paragraph in prose_paragraphs(ast.get_docstring(node) or ""):
          if sents := _unseen_sentences(paragraph, seen):
            out[SPLITS[i % 2 == 0]].append(sents)
  return {split: tuple(paragraphs) for split, paragraphs in out.items()}


def _paragraphs(split: str, source: str) -> tuple[tuple[str, ...], ...]:
  _check(split, source)
  if source == "reference":
    return _reference_paragraphs(split)
  return _docstring_paragraphs()[split]


def sentences(split: str, source: str = "reference") -> list[str]:
  """Every distinct sentence of ``split`` (``calibration`` or ``evaluation``) of ``source``
  (``reference`` pages or standard-library ``docstrings``), in page order.

  Example:
    >>> sentences("evaluation")[0].split()[:2]
    ['These', 'equivalences']
    >>> docs = sentences("calibration", source="docstrings")
    >>> len(docs) > 5000 and not set(docs) & set(sentences("evaluation"))
    True
  """
  return [s for paragraph in _paragraphs(split, source) for s in paragraph]


def retrieval_pairs(split: str, source: str = "reference") -> tuple[list[str], list[str]]:
  """``(queries, passages)``: a paragraph's first sentence and the rest of it, aligned.

  Example:
    >>> queries, passages = retrieval_pairs("evaluation")
    >>> len(queries) == len(passages) > 100
    True
  """
  pairs = [(p[0], " ".join(p[1:])) for p in _paragraphs(split, source) if len(p) >= 2]
  return [q for q, _ in pairs], [d for _, d in pairs]
