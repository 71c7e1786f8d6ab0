"""BPE training time and compression on a corpus (default: the standard library).

    python experiments/bench_tokenizer.py --vocab-size 4096

Trains a byte-level BPE with ``arlm_jax.data.tokenizer.train_bpe`` on the training documents of the
corpus (the same by-document split as the data pipeline), then encodes the held-out documents
with it and with the byte tokenizer. Prints JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import write_result  # noqa: E402
from arlm_jax.data.tokens import iter_documents, split_doc_ids  # noqa: E402
from arlm_jax.data.tokenizer import byte_encoding, encode_batch, train_bpe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--pattern", choices=("gpt2", "cl100k"), default="gpt2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    docs = list(iter_documents(args.corpus))
    val_ids = split_doc_ids([d for d, _ in docs], 0.05)
    train_texts = [t for d, t in docs if d not in val_ids]
    val_texts = [t for d, t in docs if d in val_ids]

    t0 = time.perf_counter()
    enc = train_bpe(train_texts, args.vocab_size, pattern=args.pattern)
    train_s = time.perf_counter() - t0

    val_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
    t0 = time.perf_counter()
    n_bpe = sum(map(len, encode_batch(enc, val_texts)))
    encode_s = time.perf_counter() - t0
    n_byte = sum(map(len, encode_batch(byte_encoding(), val_texts)))
    result = {
        "corpus": args.corpus, "vocab_size": enc.n_vocab, "pattern": args.pattern,
        "train_documents": len(train_texts),
        "train_mbytes": round(sum(len(t.encode("utf-8")) for t in train_texts) / 1e6, 2),
        "train_seconds": round(train_s, 2),
        "val_bytes_per_token": {"bpe": val_bytes / n_bpe, "byte": val_bytes / n_byte},
        "val_encode_mbytes_per_s": val_bytes / encode_s / 1e6,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }
    write_result(result, args.out, f"bench_tokenizer_{args.vocab_size}.json")


if __name__ == "__main__":
    main()
