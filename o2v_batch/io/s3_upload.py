"""The atomic S3 writer: a multipart upload on the shared client, completed on commit
and aborted otherwise. Its calls retry as the client's policy (s3_client.RETRY) says,
no more."""

from __future__ import annotations

import contextlib
import logging
import os

from o2v_batch.errors import InputError
from o2v_batch.io.base import AtomicWriter
from o2v_batch.io.s3_client import as_input_errors, s3_client, split_s3

PART_SIZE_ENV = "O2V_S3_PART_SIZE"
# S3's bounds on a multipart upload's parts (all but the last), and the default between.
MIN_PART_SIZE, DEFAULT_PART_SIZE, MAX_PART_SIZE = 5 * 2**20, 50 * 2**20, 5 * 2**30
logger = logging.getLogger(__name__)


class S3Writer(AtomicWriter):
    """A multipart upload: a part goes up as each fills; commit completes the upload."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self._bucket, self._key = split_s3(uri)
        self._part_size = part_size()
        self._pending = bytearray()  # less than a part
        self._parts: list[dict] = []
        with as_input_errors(uri):
            self._client = s3_client()
            upload = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
        self._upload_id = upload["UploadId"]

    def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= self._part_size:
            with memoryview(self._pending) as view:  # released before the buffer shrinks
                part = bytes(view[: self._part_size])
            del self._pending[: self._part_size]
            self._send(part)

    def _send(self, part: bytes) -> None:
        number = len(self._parts) + 1
        with as_input_errors(self.uri):
            sent = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
            )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def _commit(self) -> None:
        try:
            if self._pending:
                self._send(bytes(self._pending))
            with as_input_errors(self.uri):
                if self._parts:
                    self._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                else:  # an upload of no parts cannot complete: an empty output is one put
                    self._abort()
                    self._client.put_object(Bucket=self._bucket, Key=self._key, Body=b"")
        except InputError:
            # Leave no multipart upload behind; the commit's error is the one to report.
            with contextlib.suppress(InputError):
                self._abort()
            raise

    def _abort(self) -> None:
        with as_input_errors(self.uri):
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )


def part_size() -> int:
    """Bytes a part: O2V_S3_PART_SIZE, kept within S3's bounds, else DEFAULT_PART_SIZE."""
    value = os.environ.get(PART_SIZE_ENV)
    if value is None:
        return DEFAULT_PART_SIZE
    try:
        wanted = int(value)
    except ValueError:
        raise InputError(f"{PART_SIZE_ENV} must be a number of bytes, not {value!r}") from None
    size = min(max(wanted, MIN_PART_SIZE), MAX_PART_SIZE)
    if size != wanted:
        logger.warning(
            "%s=%d is outside S3's bounds: parts of %d bytes", PART_SIZE_ENV, wanted, size
        )
    return size
