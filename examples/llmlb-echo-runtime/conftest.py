"""Makes ``llmlb_echo_runtime`` importable when its tests run from a checkout (pytest puts this
folder on ``sys.path``), and the capability it serves, next to it, when that is not installed."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("llmlb_echo_capability") is None:
    sys.path.append(str(Path(__file__).resolve().parent.parent / "llmlb-echo-capability"))
