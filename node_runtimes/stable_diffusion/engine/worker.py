"""The stable-diffusion.cpp worker process: ``python -m llmlb_node.stable_diffusion.engine.worker FD PID``.

A node with ``cancel = "now"`` runs each loaded model in one of these (started by
:class:`~llmlb_node.stable_diffusion.engine.worker_runner.WorkerRunner`), so that it can stop an image
in progress by killing it. The worker reads commands from the pipe end ``FD``
(:mod:`worker_protocol`), runs them with :mod:`sdcpp_calls`, and sends its log records (sd.cpp's
own lines included), progress, preview frames and one reply per command.

It never outlives the node (process ``PID``): on Linux the kernel kills it when the node's
thread that started it ends (``PR_SET_PDEATHSIG``), elsewhere a watcher thread exits when its
parent changes; between commands it exits when the pipe closes. SIGINT and SIGTERM are ignored:
a Ctrl-C in a terminal or a service manager's SIGTERM reaches the whole process group, and the
node, which finishes or stops its jobs, is the one to end the worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from llmlb_node.stable_diffusion.engine.sdcpp_calls import (
    GenerationFailed,
    LoadRefused,
    generate_image,
    open_model,
)
from llmlb_node.stable_diffusion.engine.worker_protocol import (
    Done,
    Exit,
    Failed,
    Generate,
    Load,
    Loaded,
    LogLine,
    Partial,
    Progress,
    RawImage,
    Refused,
    Reply,
    Report,
    unpack,
)

log = logging.getLogger("llmlb.node.sd.worker")

PR_SET_PDEATHSIG = 1
PARENT_CHECK_S = 1.0


class Outbox:
    """The worker's end of the pipe, for its main thread and sd.cpp's (log lines)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: Report | Reply) -> None:
        try:
            with self.lock:
                self.conn.send(message)
        except OSError:
            os._exit(0)  # the node is gone


class ForwardLogs(logging.Handler):
    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.outbox.send(LogLine(record.name, record.levelno, message))


def die_with_parent(parent: int) -> None:
    """End this process when the node (``parent``) ends, however it ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(conn: Connection) -> None:
    """Run commands until :class:`Exit` or the pipe closes."""
    outbox = Outbox(conn)
    root = logging.getLogger()
    root.handlers[:] = [ForwardLogs(outbox)]
    context: Any = None
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(command, Exit):
            return
        root.setLevel(command.log_level)
        if isinstance(command, Load):
            started = time.monotonic()
            try:
                context = open_model(command.kwargs, command.weights_name)
            except LoadRefused as exc:
                outbox.send(Refused(str(exc)))
            except Exception as exc:  # a bug of ours: the node answers 503 and logs it
                log.exception("loading failed in the worker process")
                outbox.send(Refused(f"the worker process failed to load {command.weights_name}: {exc!r}"))
            else:
                outbox.send(Loaded(time.monotonic() - started))
        else:
            outbox.send(generate(context, command, outbox))


def generate(context: Any, command: Generate, outbox: Outbox) -> Done | Failed:
    if context is None:
        return Failed("no model is loaded in the worker process")

    def progress(step: int, steps: int, seconds: float) -> None:
        outbox.send(Progress(step, steps, seconds))

    def partial(partial_index: int, frame: Any) -> None:
        outbox.send(Partial(partial_index, RawImage.of(frame)))

    try:
        image = generate_image(
            context,
            unpack(command.kwargs),
            partial_images=command.partial_images,
            on_progress=progress,
            on_partial=partial,
        )
    except GenerationFailed as exc:
        return Failed(str(exc))
    except Exception as exc:  # a bug of ours: the node answers 500 and logs it
        log.exception("generation failed in the worker process")
        return Failed(f"the worker process failed to generate: {exc!r}")
    return Done(RawImage.of(image))


def main(argv: list[str]) -> None:
    fd, parent = int(argv[0]), int(argv[1])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        serve(conn)
    finally:
        conn.close()
    os._exit(0)  # freeing the model is the kernel's job: quicker than the C++ destructors


if __name__ == "__main__":
    main(sys.argv[1:])
