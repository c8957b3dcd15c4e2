"""io.shown: the one way a name, path or URI reaches a human message."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from o2v_batch.io import shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://host/b/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIAEXAMPLE",
            "https://host/b/k?<redacted>",
        ),
        ("https://user:secret@host/b/k", "https://<redacted>@host/b/k"),
        ("https://user:p@ss@host/b", "https://<redacted>@host/b"),
        ("s3://KEYID:SECRET@bucket/in/a.jsonl", "s3://<redacted>@bucket/in/a.jsonl"),
        ("http://host/k#frag", "http://host/k#<redacted>"),
        ("s3://bucket/odd?key#name.jsonl", "s3://bucket/odd?key#name.jsonl"),
        ("see https://h/p?sig=1 and more", "see https://h/p?<redacted> and more"),
        ("a\nERROR forged", "a\\nERROR forged"),
        ("tab\there\r", "tab\\there\\r"),
        ("bell\x07\x1b[31m", "bell\\x07\\x1b[31m"),
        ("caf\udce9.jsonl", "caf\\udce9.jsonl"),
        (os.fsdecode(b"caf\xe9.jsonl"), "caf\\udce9.jsonl"),
        ("a\\b.jsonl", "a\\\\b.jsonl"),
        ("line\u2028sep", "line\\u2028sep"),
        ("sub/a b.jsonl", "sub/a b.jsonl"),
        ("café/日本.jsonl", "café/日本.jsonl"),
        ("", ""),
    ],
)
def test_shown(text: str, expected: str) -> None:
    assert shown(text) == expected


@given(st.text())
def test_shown_is_printable_and_one_line(text: str) -> None:
    out = shown(text)
    assert out.isprintable()
    assert "\n" not in out and "\r" not in out
    out.encode("utf-8")  # no lone surrogates left


@given(st.text())
def test_shown_escapes_like_repr(text: str) -> None:
    # Without URIs or quotes, shown is repr without its quotes.
    plain = text.replace("://", "").replace("'", "").replace('"', "")
    assert shown(plain) == repr(plain)[1:-1]


@given(st.text().filter(lambda t: t.isprintable() and "\\" not in t and "://" not in t))
def test_shown_leaves_plain_names_alone(text: str) -> None:
    assert shown(text) == text
