"""A worker whose interpreter cannot start: the pool, `transform` and `serve` name the
cause (the exec error, or the exit status and the last lines it wrote) in one line."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from multiprocessing import resource_tracker, spawn
from pathlib import Path

import pytest
from helpers import make_model, random_records, write_jsonl

from o2v_batch.errors import WorkerError
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import ServingOptions, WorkerSpec

# The interpreter multiprocessing spawns, replaced by one that cannot run.
LAUNCHER = """\
import multiprocessing, sys
multiprocessing.set_executable(sys.argv.pop(1))
from o2v_batch.cli import main
if __name__ == "__main__":
    main()
"""


def failing_interpreter(folder: Path) -> Path:
    """Writes four lines on stderr and exits with status 3."""
    script = folder / "python-that-fails"
    lines = "".join(f"echo 'line {i} of its complaint' >&2\n" for i in range(1, 5))
    script.write_text(f"#!/bin/sh\n{lines}exit 3\n")
    script.chmod(0o755)
    return script


def not_executable(folder: Path) -> Path:
    path = folder / "python-not-executable"
    path.write_text("not a program\n")
    path.chmod(0o644)
    return path


def expected_cause(interpreter: Path) -> str:
    if interpreter.name == "python-not-executable":
        return f"cannot run {interpreter}: Permission denied"
    return (
        f"{interpreter} exited with status 3: "
        "line 2 of its complaint | line 3 of its complaint | line 4 of its complaint"
    )


@pytest.fixture(params=["failing", "not-executable"])
def interpreter(request, tmp_path) -> Path:
    make = failing_interpreter if request.param == "failing" else not_executable
    return make(tmp_path)


def test_the_pool_says_why_its_worker_could_not_start(tmp_path, interpreter):
    resource_tracker.ensure_running()  # started now, by the real interpreter
    previous = spawn.get_executable()
    multiprocessing.set_executable(str(interpreter))
    spec = WorkerSpec(str(tmp_path), "cpu", 1, ServingOptions(), "fake_servers:Echo")
    try:
        with pytest.raises(WorkerError) as caught, WorkerPool([spec] * 2) as pool:
            pool.submit(0, [0], [b"a"], "application/jsonlines", "application/jsonlines")
            for _ in range(100):
                pool.poll(0.1)
    finally:
        multiprocessing.set_executable(previous)
    # Both workers fail alike; whichever the pool sees first is named.
    assert str(caught.value) in {
        f"worker {i} could not start: {expected_cause(interpreter)}" for i in (0, 1)
    }


def launch(tmp_path: Path, interpreter: Path, *args: str) -> subprocess.CompletedProcess:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    return subprocess.run(
        [sys.executable, str(launcher), str(interpreter), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_transform_names_the_cause_and_exits_1(tmp_path, interpreter):
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(5, seed=1))
    model = make_model(tmp_path / "model")
    done = launch(
        tmp_path,
        interpreter,
        "transform",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--model",
        str(model),
        "--workers",
        "2",
        "--no-progress",
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] in {
        f"Error: worker {i} could not start: {expected_cause(interpreter)}" for i in (0, 1)
    }
    assert not (tmp_path / "out" / "a.jsonl.out").exists()


def test_serve_names_the_cause_and_exits_1(tmp_path, interpreter):
    model = make_model(tmp_path / "model")
    options = ("--model", str(model), "--host", "127.0.0.1", "--port", "0", "--workers", "1")
    done = launch(tmp_path, interpreter, "serve", *options)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: worker 0 could not start: {expected_cause(interpreter)}"
    )


STOPPED_WHILE_LAUNCHING = """
import multiprocessing, os, signal, sys
from o2v_batch.execution import worker

seen = []
signal.signal(signal.SIGTERM, lambda number, frame: seen.append("TERM"))
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job a script starts with &
with worker.stop_signals_held():
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # the handler would have run by now, were it not held
        pass
    held = list(seen)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
for _ in range(1000):
    pass
print(held, ignored, seen)
"""


def test_a_stop_signal_waits_until_a_worker_is_launched() -> None:
    # Stopped while a worker is launched, a job would leave it without its start-up
    # data (an EOFError traceback on stderr): the signal is handled once it is launched,
    # and one that the job ignores stays ignored for the worker to inherit.
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_LAUNCHING], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[] True ['TERM']\n", "")
