"""Serve the GitLab double in the foreground for a local demo:

    python -m tests.gitlab_double --port 8929 --data-dir /tmp/gl --seed seed.json
"""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
import threading

from .double import GitLabDouble
from .seed import load_seed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.gitlab_double",
                                     description="GitLab test double (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=8929)
    parser.add_argument("--data-dir", help="where bare repositories live (default: a temp dir)")
    parser.add_argument("--seed", help="JSON seed file (format: see the package docstring)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds every answer waits, as a GitLab over a network (0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="gitlab-double-")
    gl = GitLabDouble(data_dir)
    gl.start(port=args.port)
    gl.latency = args.latency
    if args.seed:
        load_seed(gl, args.seed)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"gitlab-double listening on {gl.url}", flush=True)
    done.wait()
    gl.stop()


if __name__ == "__main__":
    main()
