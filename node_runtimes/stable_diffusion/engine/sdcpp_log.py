"""stable-diffusion.cpp's own log lines, into Python logging (logger ``llmlb.node.sd.cpp``).

The binding installs a log callback at import that prints to stderr with sd.cpp's levels mapped
backwards (its errors count as debug lines and vanish unless ``verbose``), and ``verbose=False``
points the whole process's stdout and stderr at /dev/null during every call, so every thread's
logging is lost meanwhile. The engine installs this callback instead, passes ``verbose=True``
(no redirection) and quiets the binding's own prints. sd.cpp's info and debug lines go to debug,
its warnings and errors to warning and error, and the last error lines are kept so that a load
that fails can say why (:func:`take_errors`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from typing import Any

log = logging.getLogger("llmlb.node.sd.cpp")

# sd.cpp's enum sd_log_level_t: DEBUG 0, INFO 1, WARN 2, ERROR 3.
LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR}
KEPT_ERRORS = 4

_errors: deque[str] = deque(maxlen=KEPT_ERRORS)
_lock = threading.Lock()
_installed: list[Any] = []  # the ctypes callback, kept alive while the library may call it


def _on_log(level: int, text: bytes | None, _data: Any) -> None:
    line = (text or b"").decode("utf-8", errors="replace").rstrip()
    if not line:
        return
    python_level = LEVELS.get(level, logging.INFO)
    if python_level >= logging.ERROR:
        with _lock:
            _errors.append(line[:500])
    log.log(python_level, "%s", line)


def install() -> None:
    """Route sd.cpp's log lines here (once per process) and quiet the binding's prints."""
    if _installed:
        return
    import stable_diffusion_cpp as sdc

    callback = sdc.sd_log_callback(_on_log)
    sdc.sd_set_log_callback(callback, ctypes.c_void_p(0))
    _installed.append(callback)
    quiet_binding()


def quiet_binding() -> None:
    """The binding sets its logger to debug for ``verbose=True`` and then prints its own notes
    (the system info on every call) to stdout; keep only its errors."""
    logging.getLogger("stable-diffusion-cpp-python").setLevel(logging.ERROR)


def take_errors() -> list[str]:
    """The error lines sd.cpp logged since the last call (at most ``KEPT_ERRORS``)."""
    with _lock:
        lines = list(_errors)
        _errors.clear()
    return lines
