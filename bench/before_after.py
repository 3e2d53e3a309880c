"""Before and after in one run: a benchmark of this tree beside the same benchmark of an older
commit, alternating, with the ratios of their numbers.

Run: ``.venv/bin/python -m bench.before_after REF [--runs 2] -- router_overhead --quick``

It exports ``REF`` with ``git archive`` into a temporary folder and runs ``python -m
bench.<module> <args> --json ...`` there and here, in turn (before, after, before, after, ...),
each run in its own processes. The older tree's packages come first on ``PYTHONPATH`` for its
runs (through a ``sitecustomize`` shim, see ``bench._common.tree_pythonpath``), so each side
measures its own code with the same interpreter and libraries. Machine noise
hits both sides alike; compare the ratios, not the absolute numbers. It prints every
``derived`` number of the benchmark's JSON (means over the runs) before and after, and
after / before.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from bench._common import tree_pythonpath

REPO = Path(__file__).resolve().parent.parent


def export(ref: str, target: Path) -> str:
    """Write the tree of ``ref`` into ``target``; return its short commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = target.parent / "tree.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    stub_new_entry_points(target)
    return commit


# Where the installed packages' modules live in a tree (pyproject's package-dir mapping).
PACKAGE_DIRS = {"llmlb_plugins": "plugins", "llmlb_node": "node_runtimes", "llmlb_core": "llmlb_core"}


def stub_new_entry_points(tree: Path) -> None:
    """The installed metadata is this checkout's: an entry point added since ``tree`` (e.g. the
    dashboard plugin) names a module the older tree lacks, and its router would refuse to
    start. Such a module gets an empty stub in ``tree`` (no hooks: the older tree behaves as it
    did)."""
    for group in ("llmlb.plugins", "llmlb.node_runtimes"):
        for entry in metadata.entry_points(group=group):
            if entry.dist is None or entry.dist.name != "llmlb":
                continue
            package, *rest = entry.module.split(".")
            path = tree / PACKAGE_DIRS.get(package, package) / Path(*rest)
            if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
                continue
            for parent in [p for p in path.parents if tree in p.parents]:
                if not (parent / "__init__.py").exists():
                    parent.mkdir(parents=True, exist_ok=True)
                    (parent / "__init__.py").write_text("")
            path.with_suffix(".py").write_text(f'"""Stub of {entry.module} (bench.before_after)."""\n')
            print(f"(older tree: stub for entry point {entry.name} = {entry.module})", flush=True)


def run_once(tree: Path, module: str, args: list[str], out: Path) -> dict[str, Any]:
    # The older tree's code must win over this checkout's editable install in every process the
    # run starts (bench._common.tree_pythonpath explains how).
    pythonpath = str(tree) if tree == REPO else tree_pythonpath(tree, tree.parent / "shim")
    env = {**os.environ, "PYTHONPATH": pythonpath}
    command = [sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)]
    print(f"\n$ (in {tree}) {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def flatten(derived: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in derived.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        usage="python -m bench.before_after REF [--runs N] -- MODULE [ARGS...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ref", help="the older commit (before)")
    parser.add_argument("--runs", type=int, default=2, help="runs per side, alternating (default 2)")
    argv = sys.argv[1:] if argv is None else argv
    ours, bench = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    if not bench:
        parser.error("name the benchmark after --, e.g. -- router_overhead --quick")
    module, bench_args = bench[0], bench[1:]
    with tempfile.TemporaryDirectory(prefix="llmlb-before-") as tmp_name:
        tmp = Path(tmp_name)
        before_tree = tmp / "tree"
        before_tree.mkdir()
        commit = export(args.ref, before_tree)
        sides = {"before": before_tree, "after": REPO}
        numbers: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for i in range(args.runs):
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                result = run_once(sides[side], module, bench_args, tmp / f"{side}-{i}.json")
                numbers[side].append(flatten(result.get("derived", {})))
    keys = [k for k in numbers["after"][0] if all(k in n for n in numbers["before"] + numbers["after"])]
    print(f"\n{module}: before = {commit}, after = this tree; mean of {args.runs} run(s) per side")
    print(f"  {'':40}{'before':>12}{'after':>12}{'after/before':>14}")
    for key in keys:
        before = mean([n[key] for n in numbers["before"]])
        after = mean([n[key] for n in numbers["after"]])
        ratio = after / before if before else math.nan
        print(f"  {key:40}{before:12.3f}{after:12.3f}{ratio:13.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
