"""Whether worker processes can start from the program that runs a transform.

Workers are spawned: each is a fresh Python that first runs the caller's main
script again, as multiprocessing does (`__name__` is then "__mp_main__"). So the
script must be a file, and a transform it starts must sit under
`if __name__ == "__main__":`, or every worker would start the job again, fail,
and leave only worker tracebacks. Checked before any worker starts.
"""

from __future__ import annotations

import ast
import os
import sys
import threading
import tokenize
from types import FrameType, ModuleType

from o2v_batch.errors import O2VError

GUARD = 'if __name__ == "__main__":'


def check_main_module() -> None:
    """Raises O2VError, in one sentence, when spawned workers could not start from `__main__`."""
    main = sys.modules.get("__main__")
    path = _rerun_path(main)
    if path is None:
        return
    if not os.path.isfile(path):
        raise O2VError(
            f"a transform from the Python API cannot run from {path}: its worker processes "
            f"re-run the calling script, so save the code as a .py file (the transform under "
            f"`{GUARD}`) and run that"
        )
    frame = _top_level_frame(main)
    if frame is not None and not _guarded(path, frame.f_lineno):
        raise O2VError(
            f"{path}, line {frame.f_lineno}: start the transform under `{GUARD}`, because "
            "each worker process re-runs this script and would start the job again"
        )


def _rerun_path(main: ModuleType | None) -> str | None:
    """The file a spawned worker runs again before it starts, by multiprocessing's own
    rules; None when it runs none (`python -c`, a notebook, a package's __main__.py)."""
    if main is None:
        return None
    path = getattr(main, "__file__", None)
    name = getattr(main.__spec__, "name", None)
    if name is not None:
        return None if name == "__main__" or name.endswith(".__main__") else path
    if path is None or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    return path


def _top_level_frame(main: ModuleType) -> FrameType | None:
    """The frame running the main script's top-level code, if the main thread is in it
    (the transform may run in another thread that the script waits for)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    found = None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            found = frame
        frame = frame.f_back
    return found


def _guarded(path: str, line: int) -> bool:
    """True when `line` of the script lies in the body of an `if __name__ == "__main__":`.
    A script that cannot be read or parsed gets the benefit of the doubt."""
    try:
        with tokenize.open(path) as source:
            tree = ast.parse(source.read(), path)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return True
    return any(
        isinstance(node, ast.If)
        and _is_guard(node.test)
        and node.body[0].lineno <= line <= node.body[-1].end_lineno
        for node in ast.walk(tree)
    )


def _is_guard(test: ast.expr) -> bool:
    """`__name__ == "__main__"`, either way round, anywhere in the condition."""
    for node in ast.walk(test):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            sides = [node.left, node.comparators[0]]
            names = {side.id for side in sides if isinstance(side, ast.Name)}
            values = {side.value for side in sides if isinstance(side, ast.Constant)}
            if names == {"__name__"} and values == {"__main__"}:
                return True
    return False
