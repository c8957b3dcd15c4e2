"""What every response codec is: the base classes and the media types the
codecs of responses.py, columnar.py and parquet.py share."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from o2v_batch.io import AtomicWriter

PARQUET = "application/vnd.apache.parquet"
PARQUET_ALIAS = "application/x-parquet"
NPY = "application/x-npy"  # the SageMaker SDK's name
COLUMNAR_TYPES = (PARQUET, PARQUET_ALIAS, NPY)
EMBEDDING_DTYPES = ("float32", "float16")


class Framer(abc.ABC):
    """Writes the fragments of one output shard, in order, into its writer."""

    @abc.abstractmethod
    def add(self, fragment: bytes) -> None:
        """Writes the next mini-batch's fragment."""

    def region(self, length: int) -> tuple[str, int] | None:
        """Frames the next fragment, of `length` bytes, and returns where another
        process may write it (AtomicWriter.region); None where it cannot: then add()."""
        return None

    @abc.abstractmethod
    def finish(self) -> None:
        """Writes what ends the shard; the writer is then ready to commit."""

    def discard(self) -> None:  # noqa: B027 (a hook: most framers hold nothing but the writer)
        """Lets go of what the shard holds besides its writer (a spool): it is aborted."""


class Codec(abc.ABC):
    """The responses of one accept type."""

    media_type: str
    suffix = ".out"  # output shards are named <input path><suffix>

    @abc.abstractmethod
    def encode_error(self, problem: str, pos: int, key: str) -> bytes:
        """The fragment of one bad record's place under --on-bad-record emit-error."""

    @abc.abstractmethod
    def start(self, writer: AtomicWriter) -> Framer:
        """Begins an output shard in `writer`; the Framer takes its fragments."""
