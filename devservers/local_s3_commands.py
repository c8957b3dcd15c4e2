"""The shell commands of `scripts/local_s3.py`, over devservers/local_s3.py's server:
`start` in the background (it returns once S3 answers, printing the lines that point
boto3 and o2v-batch at the server), or without --background in the foreground until
Ctrl-C or SIGTERM, and `stop` for a background one:

    python scripts/local_s3.py start --dir /tmp/s3 --port 8333 --background
    python scripts/local_s3.py stop --dir /tmp/s3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from devservers import local_s3
from devservers.local_s3 import OVERRIDDEN_ENV, LocalS3, end_group


def _running(pid: int, data_dir: Path | None = None) -> bool:
    """Whether `pid` lives (and, where /proc tells, is the weed serving `data_dir`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError, IndexError):
        # An orphan whose new parent does not reap it lingers as a zombie: it has exited.
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        # After a crash or a reboot the pid may be another program's: not ours to stop.
        flag = f"-dir={data_dir / 'data'}".encode() if data_dir else b""
        return flag in (proc / "cmdline").read_bytes()
    return True


def _background_state(data_dir: str) -> tuple[Path, dict | None]:
    """Where a background server's pid and ports are kept; those, if it still runs."""
    path = Path(data_dir) / "server.json"
    with contextlib.suppress(FileNotFoundError, ValueError):
        state = json.loads(path.read_text())
        if _running(state["pid"], Path(data_dir)):
            return path, state
    return path, None


def _print_env(server: LocalS3, stop_hint: str) -> None:
    print(f"# S3 on {server.endpoint}, data and log in {server.data_dir}")
    print(f"unset {' '.join(OVERRIDDEN_ENV)}")
    print("export " + " ".join(f"{name}={value}" for name, value in server.env().items()))
    print(f"# to stop it: {stop_hint}", flush=True)


def _start(server: LocalS3, background: bool) -> int:
    data_dir = str(server.data_dir)
    state_path, running = _background_state(data_dir)
    stop_command = f"python scripts/local_s3.py stop --dir {data_dir}"
    if running:
        print(f"a server already runs on {data_dir}: {stop_command}", file=sys.stderr)
        return 1
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    if background:
        assert server.pid is not None
        state_path.write_text(json.dumps({"pid": server.pid, "ports": server.ports}))
        _print_env(server, stop_command)
        return 0
    try:
        _print_env(server, "Ctrl-C")
        status = server.wait()
    except KeyboardInterrupt:  # the way to stop it: not an error
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
    print(f"weed server exited with status {status}:\n{server.log_tail()}", file=sys.stderr)
    return 1


def _stop(data_dir: str) -> int:
    state_path, state = _background_state(data_dir)
    if state is None:
        print(f"no server started with --background runs on {data_dir}", file=sys.stderr)
        return 1
    end_group(state["pid"], 1, lambda: not _running(state["pid"]))
    server = LocalS3(data_dir)
    server.ports = state["ports"]
    server.remove_sockets()
    state_path.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=local_s3.__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the server; print the AWS_* exports")
    # Absolute: the server's command line names it, and `stop` checks that it still does.
    folder = {"type": lambda path: str(Path(path).resolve())}
    start.add_argument(
        "--dir", **folder, help="data folder (default: a temporary one, removed on exit)"
    )
    start.add_argument("--port", type=int, default=8333, help="S3 port (default 8333)")
    start.add_argument(
        "--background", action="store_true", help="return once S3 answers (needs --dir)"
    )
    stop = commands.add_parser("stop", help="stop the server started with --background")
    stop.add_argument("--dir", **folder, required=True, help="its data folder")
    args = parser.parse_args(argv)
    if args.command == "stop":
        return _stop(args.dir)
    if args.background and args.dir is None:
        parser.error("--background needs --dir")
    # SIGTERM stops the server as Ctrl-C does, quietly, whenever it comes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            data_dir = args.dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="o2v-s3-")
            )
            return _start(LocalS3(data_dir, args.port), args.background)
    except KeyboardInterrupt:  # while starting: start() has stopped weed again
        return 130


if __name__ == "__main__":
    sys.exit(main())
