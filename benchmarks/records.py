"""Generated records: the benchmark's corpus (`record_lines`): log-normal lengths
(median 24 tokens, a long tail clipped at MAX_TOKENS), Zipf-like ids, drawn with numpy
and encoded as jsonlines bytes, chunk after chunk from one generator. Seeded: the same
arguments give the same bytes.
"""

from __future__ import annotations

import numpy as np
import orjson

VOCAB = 10240  # both bench models' vocab: ids are drawn in 1..VOCAB-1 (0 is padding)
MIN_TOKENS, MAX_TOKENS = 5, 200
# Log-normal lengths: median 24 tokens, a long tail clipped at MAX_TOKENS (about 0.4% hit it).
MEDIAN_TOKENS, LENGTH_SIGMA = 24, 0.8
ZIPF_EXPONENT = 1.1  # word frequencies in text


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
