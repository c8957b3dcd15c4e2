"""scripts/: local_s3.py started and stopped as the README does, make_example_model.py's
refusal to replace what exists, and the extras that bench.py and memory_check.py name."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from processes import default_sigint

from devservers import local_s3

LOCAL_S3 = REPO / "scripts" / "local_s3.py"
MAKE_EXAMPLE_MODEL = REPO / "scripts" / "make_example_model.py"
README = (REPO / "README.md").read_text()


def readme_block(heading: str) -> str:
    """The first code block after `heading` in the README."""
    return README[README.index(heading) :].split("```\n", 2)[1]


def readme_block_line(prefix: str) -> str:
    """The README's inline command that starts with `prefix` (it sits in backquotes)."""
    start = README.index(f"`{prefix}") + 1
    return " ".join(README[start : README.index("`", start)].split())


def fresh_shell_env() -> dict[str, str]:
    """This test's venv first on PATH, and no AWS_* settings: a shell as a new user has it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    return env


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def weed_pids(data: Path) -> list[int]:
    """Live weed processes serving `data` (an exited, unreaped one has no command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or it has just exited
            continue
        if f"-dir={data}/data".encode() in command:
            pids.append(int(entry.name))
    return pids


def start_foreground(data: Path, port: int) -> subprocess.Popen[str]:
    command = [sys.executable, str(LOCAL_S3), "start", "--dir", str(data), "--port", str(port)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fresh_shell_env(),
        # Stopped with SIGINT by some tests: it takes Ctrl-C however pytest was started.
        preexec_fn=default_sigint,
    )


# -- local_s3.py ----------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.slow
def test_readme_walkthrough_runs_as_pasted(tmp_path):
    """The README's S3 block, in bash with `-e`, on a free port and a fresh folder."""
    (port,) = local_s3._free_ports(1)
    data = tmp_path / "s3"
    block = readme_block("### Walkthrough with a local S3 server")
    script = block.replace("/tmp/s3", str(data)).replace("8333", str(port))
    run = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=REPO,
        env=fresh_shell_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    listed = run.stdout.strip().splitlines()[-1]
    for key in (
        "out/2026/11/24/documented.json.out",
        "out/2026/11/24/documented.jsonl.out",
        "out/2026/11/24/pairs.jsonl.out",
        "out/_SUCCESS",
    ):
        assert f"'{key}'" in listed
    assert refused(port) and weed_pids(data) == []


@pytest.mark.s3
@pytest.mark.slow
def test_background_start_returns_once_s3_answers_and_stop_takes_about_a_second(tmp_path):
    (port,) = local_s3._free_ports(1)
    data = tmp_path / "s3"
    started = time.monotonic()
    start = [sys.executable, str(LOCAL_S3), "start", "--dir", str(data), "--port", str(port)]
    run = subprocess.run(
        [*start, "--background"], capture_output=True, text=True, env=fresh_shell_env()
    )
    try:
        assert run.returncode == 0, run.stderr
        assert run.stderr == ""
        # Answers at once, without a retry.
        server = local_s3.LocalS3(data, port)
        assert server._new_client(attempts=1).list_buckets()["Buckets"] == []
        # The lines it prints are the README's, for the README's port.
        lines = [line for line in run.stdout.splitlines() if not line.startswith("#")]
        assert [line.split()[0] for line in lines] == ["unset", "export"]
        block = readme_block("### Walkthrough with a local S3 server").splitlines()
        for line in lines:
            assert line.replace(f"127.0.0.1:{port}", "127.0.0.1:8333") in block
        # Its log is under --dir; nothing of it goes to the temp folder.
        assert "Start Seaweed S3" in (data / "weed.log").read_text()
        for log in Path("/tmp").glob("weed.*"):
            if log.is_file() and log.stat().st_mtime >= started - 1:
                assert str(data) not in log.read_text(errors="replace")
        again = subprocess.run([*start, "--background"], capture_output=True, text=True)
        assert again.returncode == 1
        assert again.stderr == (
            f"a server already runs on {data}: python scripts/local_s3.py stop --dir {data}\n"
        )
    finally:
        stopping = time.monotonic()
        stop = subprocess.run(
            [sys.executable, str(LOCAL_S3), "stop", "--dir", str(data)],
            capture_output=True,
            text=True,
        )
        stopped = time.monotonic() - stopping
    assert (stop.returncode, stop.stdout, stop.stderr) == (0, "", "")
    assert stopped < 5  # about a second: weed's own graceful stop takes 15
    assert refused(port) and weed_pids(data) == []
    assert not (data / "server.json").exists()
    assert list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock")) == []
    stop = subprocess.run(
        [sys.executable, str(LOCAL_S3), "stop", "--dir", str(data)], capture_output=True, text=True
    )
    assert (stop.returncode, stop.stderr) == (
        1,
        f"no server started with --background runs on {data}\n",
    )


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_server_stops_quietly_in_about_a_second(tmp_path, sig):
    (port,) = local_s3._free_ports(1)
    data = tmp_path / "s3"
    server = start_foreground(data, port)
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(4)]
        # The export lines come only once S3 answers.
        assert local_s3.LocalS3(data, port)._new_client(attempts=1).list_buckets()
        assert lines[-1] == "# to stop it: Ctrl-C\n"
        stopping = time.monotonic()
        server.send_signal(sig)
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert time.monotonic() - stopping < 5
    assert (server.returncode, out, err) == (0, "", "")
    assert refused(port) and weed_pids(data) == []


@pytest.mark.s3
@pytest.mark.slow
def test_ctrl_c_while_starting_stops_weed_without_a_traceback(tmp_path):
    (port,) = local_s3._free_ports(1)
    data = tmp_path / "s3"
    server = start_foreground(data, port)
    try:
        deadline = time.monotonic() + 30
        while not weed_pids(data):  # weed runs; S3 does not answer for a few seconds yet
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.05)
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert (server.returncode, out, err) == (130, "", "")
    assert refused(port) and weed_pids(data) == []


@pytest.mark.s3
def test_ctrl_c_as_weed_is_launched_stops_it_too(tmp_path, monkeypatch):
    """Ctrl-C the moment weed's process exists, before its handle is kept: the server
    still stops it, instead of leaving it running with nobody to stop it."""
    launch = subprocess.Popen

    def interrupted(*args, **kwargs):
        process = launch(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # pytest's own handler: KeyboardInterrupt
        return process

    monkeypatch.setattr(local_s3.subprocess, "Popen", interrupted)
    server = local_s3.LocalS3(tmp_path / "s3")
    try:
        with pytest.raises(KeyboardInterrupt):
            server.start()
        assert weed_pids(tmp_path / "s3") == []
    finally:
        for pid in weed_pids(tmp_path / "s3"):
            os.kill(pid, signal.SIGKILL)


# -- make_example_model.py --------------------------------------------------------------


def make_example_model(*args: str, script: Path = MAKE_EXAMPLE_MODEL):
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # the script imports torch first
def test_make_example_model_refuses_to_replace_the_shipped_model(tmp_path):
    """Run without arguments, from a copy of the checkout: its examples/ exist."""
    script = tmp_path / "scripts" / "make_example_model.py"
    script.parent.mkdir()
    shutil.copy(MAKE_EXAMPLE_MODEL, script)
    examples = tmp_path / "examples"
    (examples / "model").mkdir(parents=True)
    (examples / "model" / "model.safetensors").write_bytes(b"shipped")
    (examples / "requests").mkdir()
    (examples / "requests" / "documented.jsonl").write_text("shipped\n")
    run = make_example_model(script=script)
    assert run.returncode == 2
    assert run.stderr.endswith(
        f"error: would replace {examples / 'model'}, {examples / 'requests'}: "
        "pass --overwrite, or --output and --examples to build elsewhere\n"
    )
    assert (examples / "model" / "model.safetensors").read_bytes() == b"shipped"
    assert sorted(p.name for p in examples.rglob("*")) == [
        "documented.jsonl",
        "model",
        "model.safetensors",
        "requests",
    ]


@pytest.mark.slow
def test_make_example_model_builds_elsewhere_then_refuses_to_replace_it(tmp_path):
    """The README's command builds a model; run again, it replaces it only with --overwrite."""
    command = readme_block_line("python scripts/make_example_model.py")
    args = command.replace("/tmp/", f"{tmp_path}/").split()[2:]
    assert args == ["--output", f"{tmp_path}/model", "--examples", f"{tmp_path}/examples"]
    built = make_example_model(*args)
    assert built.returncode == 0, built.stderr
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    for name in ("requests/documented.json", "train/train.jsonl"):
        assert (tmp_path / "examples" / name).read_bytes() == (
            REPO / "examples" / name
        ).read_bytes()
    again = make_example_model(*args)
    assert again.returncode == 2
    assert "would replace" in again.stderr
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == weights


# -- extras named when a module is missing ----------------------------------------------


@pytest.mark.parametrize(
    ("script", "module", "args"),
    [
        ("bench.py", "psutil", []),
        ("bench.py", "matplotlib", ["--quick"]),
        ("bench.py", "ray", ["--systems", "ray-data"]),
        ("memory_check.py", "psutil", []),
    ],
)
def test_scripts_name_the_extra_they_need(script, module, args):
    path = REPO / "scripts" / script
    hide_and_run = (
        "import runpy, sys\n"
        f"sys.modules[{module!r}] = None  # `import {module}` now fails\n"
        f"sys.argv = [{str(path)!r}, *{args!r}]\n"
        f"runpy.run_path({str(path)!r}, run_name='__main__')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", hide_and_run], capture_output=True, text=True, timeout=120
    )
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == f"scripts/{script} needs {module}: pip install -e '.[bench]'\n"


# Those that import torch before they parse their arguments take a second each.
TORCH_FIRST = {"gpu_check.py", "make_example_model.py"}


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name in TORCH_FIRST else [])
        for name in sorted(p.name for p in (REPO / "scripts").glob("*.py"))
    ],
)
def test_help_cites_only_what_the_repository_holds(script):
    """A script's --help sends its reader to files and README sections that exist."""
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "DESIGN" not in run.stdout
    for name in re.findall(r"[\w./-]+\.md\b", run.stdout):
        assert (REPO / name).is_file(), name
    for section in re.findall(r"the README's (\w+) section", run.stdout):
        assert f"\n## {section}\n" in README, section
    if script == "bench.py":
        assert "the README's Performance section" in run.stdout


@pytest.mark.slow  # six models twice over, and two whole jobs
def test_gpu_check_runs_on_the_cpu_and_holds_fp32_to_the_cpu(tmp_path):
    """scripts/gpu_check.py as a session lent a GPU runs it, here with --devices cpu:
    every fp32 row (the CPU against itself) is exact, the lower precisions are not."""
    command = [sys.executable, "scripts/gpu_check.py", "--devices", "cpu", "--records", "8"]
    run = subprocess.run(
        [*command, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    outputs = {(r["model"], r["output"]) for r in rows}
    assert ("heavy-hcnn", "embed in0 with zeros") in outputs
    assert ("light-example", "transform scores") in outputs
    by_precision = {
        p: [r["relative"] for r in rows if r["precision"] == p] for p in ("fp32", "tf32", "bf16")
    }
    assert max(by_precision["fp32"]) == 0.0 and max(by_precision["tf32"]) == 0.0
    assert min(by_precision["bf16"]) > 0.0
    assert (tmp_path / "gpu_check.md").read_text().startswith("| model | precision |")
