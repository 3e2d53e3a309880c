"""stable-diffusion.cpp in a worker process, one per loaded model (``cancel = "now"``).

- :meth:`WorkerRunner.load` starts a fresh interpreter running :mod:`worker` (its own pipe, no
  other file descriptor of the node, no ``LLMLB_*`` variable: the node's keys stay in the node)
  and has it load the model; the node itself never loads the weights. Unloading, or loading
  another model, ends that process: the kernel gives its memory back at once.
- :meth:`WorkerRunner.generate` sends the image's arguments and relays what comes back on the
  calling thread (the engine's worker thread): the worker's log records into this process's
  logging (same logger, same level), progress and preview frames to the image's events, then the
  image. A log level travels with each command, so the worker sends only the records that this
  process would keep.
- :meth:`WorkerRunner.stop_now` (from the event loop) sends SIGKILL: the call in progress sees
  its pipe close, reaps the process (no zombie) and raises ``RunnerGone``. A worker that dies by
  itself (a crash, the out-of-memory killer) ends the call the same way, saying how it ended.
- The worker dies with the node (see :mod:`worker`): started from the engine's worker thread,
  which lives as long as the engine, it is killed by the kernel if the node is.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from llmlb_node.stable_diffusion.engine.runners import ImageCall, ImageEvents, RunnerGone
from llmlb_node.stable_diffusion.engine.sdcpp_calls import GenerationFailed, LoadRefused
from llmlb_node.stable_diffusion.engine.sdcpp_log import log as sdcpp_logger
from llmlb_node.stable_diffusion.engine.worker_protocol import (
    Command,
    Done,
    Exit,
    Failed,
    Generate,
    Load,
    Loaded,
    LogLine,
    Partial,
    Progress,
    Refused,
    Reply,
    pack,
)

log = logging.getLogger("llmlb.node.sd")

WORKER_MODULE = "llmlb_node.stable_diffusion.engine.worker"
EXIT_WAIT_S = 5.0


def worker_env() -> dict[str, str]:
    """The node's environment without its own settings (keys, tokens): the worker needs none."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMLB_")}


def how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return "is gone"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {returncode}"


class WorkerRunner:
    """stable-diffusion.cpp in a worker process (see the module docstring)."""

    stops_mid_image = True

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._stopping = False  # stop_now was called for the call in progress
        self._guard = threading.Lock()  # _proc between the worker thread and stop_now

    # --- the process ------------------------------------------------------------------------
    def _start(self) -> None:
        ours, theirs = multiprocessing.Pipe(duplex=True)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=worker_env(),
            )
        except OSError as exc:
            ours.close()
            raise LoadRefused(f"the worker process could not start: {exc}") from exc
        finally:
            theirs.close()
        with self._guard:
            self._proc, self._conn, self._stopping = proc, ours, False

    def _reap(self) -> int | None:
        """Close the pipe and wait for the process (already ending); its exit status."""
        with self._guard:
            proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            return proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _end(self) -> None:
        """Ask the worker to exit (it frees its model by exiting), then reap it."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(Exit())
        self._reap()

    def _gone(self) -> RunnerGone:
        stopped = self._stopping
        pid = self._proc.pid if self._proc is not None else None
        returncode = self._reap()
        if stopped:
            return RunnerGone(f"worker process {pid} stopped", stopped=True)
        ended = how_it_ended(returncode)
        return RunnerGone(f"stable-diffusion.cpp's worker process {pid} {ended}", stopped=False)

    def _call(self, command: Command, events: ImageEvents | None = None) -> Reply:
        """Send ``command`` and relay what the worker reports until its reply."""
        conn = self._conn
        if conn is None:
            raise RunnerGone("no model is loaded", stopped=False)
        try:
            conn.send(command)
            while True:
                message = conn.recv()
                if isinstance(message, LogLine):
                    logging.getLogger(message.logger).log(message.level, "%s", message.message)
                elif isinstance(message, Progress):
                    if events is not None:
                        events.progress(message.step, message.steps, message.seconds)
                elif isinstance(message, Partial):
                    if events is not None:
                        events.partial(message.partial_index, message.frame.image())
                else:
                    return message  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            raise self._gone() from exc

    # --- SDRunner ---------------------------------------------------------------------------
    def load(self, kwargs: dict[str, Any], weights_name: str) -> None:
        self._end()  # one model per worker
        self._start()
        try:
            reply = self._call(Load(kwargs, weights_name, sdcpp_logger.getEffectiveLevel()))
        except RunnerGone as exc:
            raise LoadRefused(f"{exc} while loading {weights_name}") from exc
        if isinstance(reply, Refused):
            self._end()
            raise LoadRefused(reply.message)
        assert isinstance(reply, Loaded), reply

    def generate(self, call: ImageCall, events: ImageEvents) -> Image.Image:
        level = min(sdcpp_logger.getEffectiveLevel(), log.getEffectiveLevel())
        reply = self._call(Generate(pack(call.args.kwargs()), call.partial_images, level), events)
        if isinstance(reply, Failed):
            raise GenerationFailed(reply.message)
        assert isinstance(reply, Done), reply
        return reply.image.image()

    def unload(self) -> None:
        self._end()

    def stop_now(self) -> bool:
        with self._guard:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return False
            self._stopping = True
            proc.kill()
        return True

    def close(self) -> None:
        self._end()

    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None
