"""``python -m llmlb_core.cli``: the same as the ``llmlb`` command."""

from llmlb_core.cli.main import main

raise SystemExit(main())
