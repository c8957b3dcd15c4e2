"""io/s3_client.py and io/s3_errors.py: the S3 transport's parts that need no server
(URIs, the client and its retry policy, errors described)."""

from __future__ import annotations

import socket
import time

import botocore.exceptions
import pytest

from o2v_batch import io as sources
from o2v_batch.errors import InputError
from o2v_batch.io import s3, s3_client


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://b/k", ("b", "k")),
        ("s3://b/p/k.jsonl", ("b", "p/k.jsonl")),
        ("s3://b/p/", ("b", "p/")),
        ("s3://b", ("b", "")),
    ],
)
def test_split_s3(uri, expected):
    assert s3.is_s3(uri)
    assert s3.split_s3(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "/local/path", "S3://b/k"])
def test_split_s3_refuses_non_s3_uris(uri):
    with pytest.raises(InputError) as info:
        s3.split_s3(uri)
    assert str(info.value) == f"not an s3://bucket/key URI: {uri}"


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "GetObject")


SIGNED = "http://user:pw@127.0.0.1:9/b/k?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=abc"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (client_error("NoSuchKey", 404), "s3://b/k: not found (404)"),
        (client_error("404", 404), "s3://b/k: not found (404)"),
        (client_error("NoSuchBucket", 404), "s3://b/k: bucket b does not exist (404)"),
        (client_error("AccessDenied", 403), "s3://b/k: access denied (403)"),
        (
            client_error("InvalidAccessKeyId", 403),
            "s3://b/k: access denied (403, InvalidAccessKeyId)",
        ),
        (client_error("SlowDown", 503), "s3://b/k: S3 error SlowDown (503)"),
        (
            botocore.exceptions.EndpointConnectionError(
                endpoint_url=SIGNED, error=ConnectionRefusedError(111, "Connection refused")
            ),
            "cannot reach the S3 endpoint http://127.0.0.1:9 (connection refused)",
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url=SIGNED, error=TimeoutError()),
            "cannot reach the S3 endpoint http://127.0.0.1:9 (read timed out)",
        ),
        (
            botocore.exceptions.ProxyConnectionError(
                proxy_url="http://user:secret@proxy:3128", error=ConnectionRefusedError()
            ),
            "cannot reach the proxy http://proxy:3128 (connection refused)",
        ),
        (
            botocore.exceptions.NoCredentialsError(),
            "s3://b/k: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use an instance role)",
        ),
        # Not a botocore error: described as it is.
        (OSError("unable to access bucket"), "s3://b/k: OSError: unable to access bucket"),
        # Already one of ours, with its own message.
        (InputError("s3://b/k: access denied (403)"), "s3://b/k: access denied (403)"),
    ],
)
def test_describe_error(exc, message):
    assert sources.describe_error(exc, "s3://b/k") == message


def test_describe_error_sees_through_smart_open_wrappers():
    inner = client_error("NoSuchKey", 404)
    try:
        try:
            raise inner
        except botocore.exceptions.ClientError as error:
            raise ValueError("the bucket 'b' does not exist, or is forbidden") from error
    except ValueError as wrapped:
        assert sources.describe_error(wrapped, "s3://b/k") == "s3://b/k: not found (404)"


def test_describe_error_never_shows_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretkey")
    exc = botocore.exceptions.ParamValidationError(
        report=f"key AKIDSECRETID secret verysecretkey url {SIGNED}"
    )
    assert sources.describe_error(exc, "s3://b/k") == (
        "s3://b/k: ParamValidationError: Parameter validation failed: "
        "key *** secret *** url http://127.0.0.1:9/b/k"
    )


def test_s3_client_is_cached_and_follows_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = s3.s3_client()
    assert s3.s3_client() is client
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.config.retries["total_max_attempts"] == 7
    assert client.meta.config.retries["mode"] == "standard"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert s3.s3_client().meta.endpoint_url == "http://127.0.0.1:2"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AWS_MAX_ATTEMPTS", "many", "AWS_MAX_ATTEMPTS must be a whole number, not 'many'"),
        ("O2V_S3_PART_SIZE", "5MB", "O2V_S3_PART_SIZE must be a number of bytes, not '5MB'"),
    ],
)
def test_bad_settings_are_input_errors(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError) as info:
        sources.open_write("s3://b/k.out")
    assert str(info.value) == message


def test_the_retry_policy_is_one_object_callers_may_tune(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setattr(s3_client.RETRY, "attempts", 2)
    monkeypatch.setattr(s3_client.RETRY, "mode", "adaptive")
    monkeypatch.setattr(s3_client.RETRY, "read_timeout", 5.0)
    config = s3.s3_client().meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 2}
    assert config.read_timeout == 5.0


def test_an_upload_to_a_dead_endpoint_fails_at_once_and_patches_nothing(monkeypatch):
    """The policy's attempts are all an upload makes: no retry of smart_open's on top
    (a minute per shard), and smart_open's own policy is left as it is."""
    import smart_open.s3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for name, value in (("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "secret")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(s3_client.RETRY, "attempts", 1)
    started = time.monotonic()
    with pytest.raises(InputError) as info:
        sources.open_write("s3://b/k.out")
    assert time.monotonic() - started < 5
    assert (
        str(info.value)
        == f"cannot reach the S3 endpoint http://127.0.0.1:{port} (connection refused)"
    )
    assert smart_open.s3.RETRY.exceptions == [botocore.exceptions.EndpointConnectionError]
