"""io/stdio.py: stdin as the one input shard, stdout showing whole shards only."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO

from o2v_batch import io as sources
from o2v_batch.io import Shard
from o2v_batch.io.stdio import STDOUT_SPOOL_BYTES


def test_stdin_is_one_shard_of_unknown_size():
    assert sources.list_shards("-", "-") == [Shard("-", "-", -1)]


def test_stdout_never_holds_an_earlier_output():
    assert sources.size("-") is None


def test_stdin_is_read_as_bytes(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"in0": [1]}\n')))
    assert sources.open_read("-").read() == b'{"in0": [1]}\n'


@pytest.mark.slow
def test_sigterm_while_stdin_waits_on_an_open_pipe_exits_143(tmp_path):
    """The reader thread blocked on an idle pipe holds no lock the exiting interpreter
    needs: the job ends as a terminated Unix tool does, not with Python's abort (134)."""
    command = [sys.executable, "-m", "o2v_batch", "transform", "-", str(tmp_path / "out")]
    read_end, write_end = os.pipe()  # held open, and nothing written to it
    try:
        job = subprocess.Popen(
            [*command, "--model", str(REPO / "examples" / "model")],
            stdin=read_end,
            stderr=subprocess.PIPE,
        )
        os.close(read_end)
        time.sleep(3)  # planned, the reader waiting on stdin
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    finally:
        os.close(write_end)
    assert job.returncode == 143, stderr.decode()
    assert b"Fatal Python error" not in stderr
    assert stderr.decode().endswith("o2v-batch: terminated\n")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_stdout_shows_only_committed_shards(capsysbinary):
    big = b"x" * (STDOUT_SPOOL_BYTES + 123)  # spills to disk
    first = sources.open_write("-")
    first.write(b"one\n")
    assert capsysbinary.readouterr().out == b""
    first.commit()
    with pytest.raises(RuntimeError), sources.open_write("-") as failed:
        failed.write(b"half of a shard\n")
        raise RuntimeError
    sources.write_atomic("-", big)
    assert capsysbinary.readouterr().out == b"one\n" + big


def test_stdout_writer_in_a_real_process():
    script = textwrap.dedent(
        """
        from o2v_batch import io as sources
        w = sources.open_write("-")
        w.write(b"partial")
        w.abort()
        sources.write_atomic("-", b"a\\n")
        w = sources.open_write("-")
        w.write(b"b\\n")
        w.commit()
        w = sources.open_write("-")
        w.write(b"never")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert done.stdout == b"a\nb\n"


def test_a_closed_stdout_is_stdout_closed_not_an_error_of_the_shard():
    """StdoutClosed is no Exception: no shard takes it for its own failure."""
    script = textwrap.dedent(
        """
        import sys
        from o2v_batch import io as sources
        from o2v_batch.errors import StdoutClosed
        w = sources.open_write("-")
        w.write(b"a line\\n" * 1000)
        sys.stdin.readline()  # the reader of stdout has gone by now
        try:
            w.commit()
        except Exception:
            print("an Exception", file=sys.stderr)
        except StdoutClosed:
            print("stdout closed", file=sys.stderr)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()
    _, stderr = child.communicate(b"go\n", timeout=60)
    assert stderr.decode().splitlines()[-1] == "stdout closed"
