"""SageMaker manifests: `[{"prefix": "s3://bucket/prefix/"}, "relative/path", ...]`."""

from __future__ import annotations

import concurrent.futures
import json
import posixpath
from collections.abc import Callable

from o2v_batch.errors import InputError, UnsafePathError
from o2v_batch.io.base import Shard, shown, unsafe_reason


def manifest_shards(
    manifest: str, document: bytes, size: Callable[[str], int | None]
) -> list[Shard]:
    """The shards a manifest names, in its own order; `size` gives None for a missing one."""
    try:
        parsed = json.loads(document)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{shown(manifest)}: not a valid manifest: invalid JSON ({exc})") from exc
    prefix, spellings = _manifest_parts(manifest, parsed)
    entries = _normalised(manifest, spellings)
    uris = [prefix + entry for entry in entries]
    # One request per entry on S3: in parallel, or a long manifest takes minutes.
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        sizes = list(pool.map(size, uris))
    for entry, uri, found in zip(entries, uris, sizes, strict=True):
        if found is None:
            raise InputError(f"{shown(manifest)}: manifest entry {entry!r} not found: {shown(uri)}")
    return [Shard(u, e, s) for u, e, s in zip(uris, entries, sizes, strict=True)]  # type: ignore[arg-type]


def _normalised(manifest: str, spellings: list[str]) -> list[str]:
    """The entries as shard paths (`sub/./a.jsonl` and `sub//a.jsonl` are `sub/a.jsonl`),
    refusing unsafe ones and two entries for one shard: they would write one output."""
    first: dict[str, str] = {}
    for spelling in spellings:
        reason = unsafe_reason(spelling)
        if reason:
            raise UnsafePathError(
                f"{shown(manifest)}: unsafe manifest entry {spelling!r} ({reason})"
            )
        entry = posixpath.normpath(spelling)
        if entry in first:
            raise InputError(f"{shown(manifest)}: {_duplicate(first[entry], spelling)}")
        first[entry] = spelling
    return list(first)


def _duplicate(earlier: str, spelling: str) -> str:
    if earlier == spelling:
        return f"duplicate manifest entry {spelling!r}"
    return f"manifest entries {earlier!r} and {spelling!r} name the same shard"


def _manifest_parts(manifest: str, document: object) -> tuple[str, list[str]]:
    """The prefix (ending with "/") and the entries of a parsed manifest."""
    if not isinstance(document, list) or not document:
        raise InputError(
            f"{shown(manifest)}: not a valid manifest: expected a JSON list "
            '[{"prefix": "s3://bucket/prefix/"}, "relative/path", ...]'
        )
    head, *entries = document
    prefix = head.get("prefix") if isinstance(head, dict) else None
    if not isinstance(prefix, str) or not prefix or len(head) != 1:
        raise InputError(
            f"{shown(manifest)}: not a valid manifest: the first element must be "
            '{"prefix": "<folder or s3://bucket/prefix/>"}'
        )
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, str):
            raise InputError(
                f"{shown(manifest)}: not a valid manifest: element {index} is not a string: {json.dumps(entry)}"
            )
    # SageMaker concatenates prefix and entry; a missing slash is surely meant.
    return (prefix if prefix.endswith("/") else prefix + "/"), entries
