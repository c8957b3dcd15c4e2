"""A worker's allocator keeps what a mini-batch frees for the next one (glibc, Linux)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from o2v_batch.execution import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# In a fresh interpreter: a 24 MB block written, freed, allocated again and written
# again; prints the pages faulted in by the second writing and the block's pages.
SECOND_WRITE = """
import ctypes, resource, sys
from o2v_batch.execution import allocator
if sys.argv[1] == "kept":
    assert allocator.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 24 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
block = libc.malloc(size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(block, 2, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, size // 4096)
"""


def second_write_faults(how: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k not in allocator.ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", SECOND_WRITE, how],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    faults, pages = map(int, done.stdout.split())
    return faults, pages


def test_a_freed_block_is_reused_without_faulting_its_pages_in_again() -> None:
    faults, pages = second_write_faults("kept")
    assert faults < pages // 10
    # glibc's default gives the block back to the system: every page faults again.
    faults, pages = second_write_faults("default")
    assert faults > pages // 2


def test_malloc_settings_in_the_environment_stand(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in allocator.ENVIRONMENT:
        monkeypatch.setenv(name, "0")
        assert allocator.keep_freed_memory() is False
        monkeypatch.delenv(name)


def test_workers_and_the_command_keep_freed_memory() -> None:
    """The pool's workers and Ray's actors (worker.start_server), and the command's own
    process, ask for it as they start."""
    code = (
        "import sys\n"
        "from unittest import mock\n"
        "from o2v_batch.execution import allocator, worker\n"
        "from o2v_batch.cli import main\n"
        "with mock.patch.object(allocator, 'keep_freed_memory') as kept:\n"
        "    worker._prepare_imports()\n"
        f"    main(['inspect', {str(REPO / 'examples' / 'model')!r}], standalone_mode=False)\n"
        "print(kept.call_count)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "parameters: 339,138" in done.stdout  # the command ran
    assert done.stdout.splitlines()[-1] == "2"
