"""main_module.py: a transform from a script without the `__main__` guard, or from
stdin, stops before any worker starts, with one sentence; real Python processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUARD_MESSAGE = (
    'start the transform under `if __name__ == "__main__":`, because each worker process '
    "re-runs this script and would start the job again"
)


def job(out: Path) -> str:
    """A real transform of the example requests, as a user's script would start it."""
    return (
        f"o2v_batch.transform(TransformConfig(input={str(REPO / 'examples' / 'requests')!r}, "
        f"output={str(out)!r}, model={str(REPO / 'examples' / 'model')!r}, workers=1))"
    )


def run_python(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], input=script, capture_output=True, text=True, timeout=120
    )


def assert_one_sentence(done: subprocess.CompletedProcess, sentence: str) -> None:
    """Exit 1 with the caller's own traceback only: no worker ever started."""
    assert done.returncode == 1
    assert done.stderr.count("Traceback") == 1
    assert done.stderr.endswith(f"o2v_batch.errors.O2VError: {sentence}\n")
    assert "o2v-worker" not in done.stderr and "while loading the model" not in done.stderr


def test_a_script_without_the_guard(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        "import o2v_batch\nfrom o2v_batch.config import TransformConfig\n\n"
        f"summary = {job(tmp_path / 'out')}\n"
    )
    done = run_python(str(script))
    assert_one_sentence(done, f"{script}, line 4: {GUARD_MESSAGE}")
    assert not (tmp_path / "out").exists()


def test_a_script_that_calls_a_function_without_the_guard(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import threading

            import o2v_batch
            from o2v_batch.config import TransformConfig

            def main():
                {job(tmp_path / "out")}

            if __name__ == "__main__":
                print("guarded")
            thread = threading.Thread(target=main)  # not even a thread hides it
            thread.start()
            thread.join()
            """
        )
    )
    done = run_python(str(script))
    assert done.returncode == 0  # the error is the thread's: the script itself goes on
    assert done.stdout == "guarded\n"
    assert f"O2VError: {script}, line 14: {GUARD_MESSAGE}" in done.stderr
    assert not (tmp_path / "out").exists()


def test_code_from_stdin(tmp_path: Path) -> None:
    script = (
        "import o2v_batch\nfrom o2v_batch.config import TransformConfig\n"
        f"if __name__ == '__main__':\n    {job(tmp_path / 'out')}\n"
    )
    done = run_python("-", script=script)
    assert_one_sentence(
        done,
        "a transform from the Python API cannot run from <stdin>: its worker processes re-run "
        "the calling script, so save the code as a .py file (the transform under "
        '`if __name__ == "__main__":`) and run that',
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "guard",
    [
        'if __name__ == "__main__":',
        "if '__main__' == __name__:",
        'if __name__ == "__main__" and True:',
    ],
)
def test_guarded_scripts_and_code_without_a_file_may_start_workers(
    tmp_path: Path, guard: str
) -> None:
    check = "from o2v_batch.execution.main_module import check_main_module\n"
    script = tmp_path / "run.py"
    script.write_text(f"{check}{guard}\n    check_main_module()\n    print('ok')\n")
    assert run_python(str(script)).stdout == "ok\n"
    # python -c: multiprocessing runs nothing of it again in a worker.
    assert run_python("-c", f"{check}check_main_module(); print('ok')").stdout == "ok\n"


@pytest.mark.slow  # spawns workers
def test_the_readme_python_api_example_runs_as_a_script(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = section[section.index("```python\n") + 10 : section.index("\n```\n")]
    assert 'if __name__ == "__main__":' in code
    assert '"out/"' not in code  # the quick start's output folder
    script = tmp_path / "api.py"
    script.write_text(code)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "57 0"
