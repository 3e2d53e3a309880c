"""Makes ``llmlb_echo_capability`` importable when its tests run from a checkout (pytest puts
this folder on ``sys.path``); an installed package needs nothing."""
