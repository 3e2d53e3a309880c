"""A real, private PostgreSQL server for the tests: ``initdb`` into a temporary folder, started on
a free port (TCP on 127.0.0.1, its unix socket in the same folder), one database made per test,
and always stopped and removed at the end, even after a failure.

Each pytest(-xdist) worker starts its own server (a session fixture is per worker). ``initdb``
and ``postgres`` refuse to run as root, and the tests (CI included) run as root: the server then
runs as the ``postgres`` user Debian's package creates (``runuser -u postgres``), its folder
owned by that user; not root, it runs as the current user.

The binaries: ``LLMLB_TEST_PG_BIN`` (a folder), else the newest /usr/lib/postgresql/*/bin, else
``initdb`` on PATH. Missing: the tests skip saying how to install them, except under CI, where
they fail (``make test`` installs Debian's ``postgresql``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench._common import free_port
from tests.support.ci import missing

SUPERUSER = "postgres"
INSTALL = "apt-get install -y postgresql (or run `make test`, which installs it)"


def pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres; None when they are not installed."""
    if given := os.environ.get("LLMLB_TEST_PG_BIN"):
        return Path(given)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name),
        reverse=True,
    )
    if versions:
        return versions[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def require_pg_bin() -> Path:
    """:func:`pg_bin`, or skip (fail under CI) naming how to install it."""
    folder = pg_bin()
    if folder is None or not (folder / "initdb").exists():
        reason = f"PostgreSQL's server binaries (initdb, pg_ctl) are missing: {INSTALL}"
        missing(reason, "the PostgreSQL tests")
    return folder


class PostgresServer:
    """One private server; :meth:`database` makes an empty database and returns its URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="llmlb-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._count = 0
        self._run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the package's postgres user runs it
            user = SUPERUSER if _user_exists(SUPERUSER) else "nobody"
            account = pwd.getpwnam(user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", user, "--"]

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._run_as, *args], capture_output=True, text=True, check=check, timeout=120, cwd=self.root
        )

    def start(self) -> PostgresServer:
        self._cmd(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        for attempt in range(5):  # a port taken between free_port() and the start: another one
            self.port = free_port()
            done = self._pg_ctl_start()
            if done.returncode == 0:
                return self
            if attempt == 4:
                log = (self.root / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{log}")
        return self

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off"
        )
        return self._cmd(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
            "-w", "-t", "60", "start", check=False,
        )  # fmt: skip

    def down(self) -> None:
        """Stop the server (every connection cut), keeping its data for :meth:`up`."""
        self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def up(self) -> None:
        """Start a server stopped by :meth:`down` again, on the same port."""
        done = self._pg_ctl_start()
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start again: {done.stdout}{done.stderr}")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        user = SUPERUSER if password is None else f"{SUPERUSER}:{password}"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._count += 1
        name = f"t{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def restart(self) -> None:
        """Stop (fast: every connection cut) and start again, same port and options."""
        self._cmd(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-m", "fast", "-w",
            "-t", "60", "restart",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                self._cmd(
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                    check=False,
                )
        shutil.rmtree(self.root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed on leaving (whatever happened)."""
    server = PostgresServer(require_pg_bin())
    try:
        yield server.start()
    finally:
        server.stop()
