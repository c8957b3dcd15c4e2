"""Generated records: the benchmark's corpus, and the uneven records of the tests and
the memory check.

The corpus (`record_lines`): log-normal lengths (median 24 tokens, a long tail clipped
at MAX_TOKENS), Zipf-like ids, drawn with numpy and encoded as jsonlines bytes, chunk
after chunk from one generator. Uneven records (`random_records`): in0-only, in1-only
and pair records, each sequence's length drawn from a short list, drawn with Python's
`random`. Both are seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import orjson

VOCAB = 10240  # both bench models' vocab: ids are drawn in 1..VOCAB-1 (0 is padding)
MIN_TOKENS, MAX_TOKENS = 5, 200
# Log-normal lengths: median 24 tokens, a long tail clipped at MAX_TOKENS (about 0.4% hit it).
MEDIAN_TOKENS, LENGTH_SIGMA = 24, 0.8
ZIPF_EXPONENT = 1.1  # word frequencies in text
# Uneven records' lengths by default, beside max_len (some over a model's max_seq_len).
UNEVEN_LENGTHS = (1, 2, 3, 5, 8, 13, 21)


def zipf_cdf(vocab: int) -> np.ndarray:
    ranks = np.arange(1, vocab, dtype=np.float64)
    cdf = np.cumsum(ranks**-ZIPF_EXPONENT)
    return cdf / cdf[-1]


def draw_sequences(
    rng: np.random.Generator, n: int, cdf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All ids of n sequences as one array, and each sequence's start offset (n + 1 long)."""
    raw = rng.lognormal(np.log(MEDIAN_TOKENS), LENGTH_SIGMA, n)
    lengths = np.clip(raw.astype(np.int64), MIN_TOKENS, MAX_TOKENS)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # Rank r (0-based) becomes id r + 1: frequent ids are small, like a frequency-sorted vocab.
    ids = np.searchsorted(cdf, rng.random(int(offsets[-1]))) + 1
    return ids.astype(np.int64), offsets


def record_lines(
    rng: np.random.Generator, count: int, names: tuple[str, ...], cdf: np.ndarray
) -> bytes:
    """`count` corpus records, each with a sequence per name, as jsonlines bytes."""
    inputs = [draw_sequences(rng, count, cdf) for _ in names]
    lines = [
        orjson.dumps(
            {
                name: ids[off[i] : off[i + 1]]
                for name, (ids, off) in zip(names, inputs, strict=True)
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        for i in range(count)
    ]
    return b"\n".join(lines) + b"\n"


def random_records(
    n: int,
    seed: int = 0,
    pairs: bool = True,
    vocab: int = 60,
    max_len: int = 30,
    lengths: Sequence[int] | None = None,
) -> list[dict]:
    """in0-only, in1-only and (optionally) pair records, ids in 1..vocab-1. Each
    sequence's length is drawn from `lengths`; by default very uneven ones,
    UNEVEN_LENGTHS and max_len."""
    rng = random.Random(seed)
    choices = [*UNEVEN_LENGTHS, max_len] if lengths is None else lengths

    def seq() -> list[int]:
        length = rng.choice(choices)
        return [rng.randrange(1, vocab) for _ in range(length)]

    kinds = ["in0", "in1", "pair"] if pairs else ["in0", "in1"]
    records = []
    for _ in range(n):
        kind = rng.choice(kinds)
        records.append({"in0": seq(), "in1": seq()} if kind == "pair" else {kind: seq()})
    return records


def write_jsonl(path: Path, records: Iterable) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
