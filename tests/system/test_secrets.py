"""Secrets at rest, through real router processes: a private data dir and database, upstream
endpoint keys encrypted with ``LLMLB_SECRET_KEY``, and a clean refusal to start with a wrong or
missing secret.

The encrypted key is looked for in the raw bytes of the SQLite database and its write-ahead log
(what a stolen copy holds), not only through the store's API. The upstream is the loopback
server of ``tests/text_backends.py``, which answers only requests carrying its key.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import openai

from tests.support.servers import Proc, create_key, router_proc
from tests.support.text_fixtures import UPSTREAM_KEY, backend, register_endpoint, wait_endpoint

SECRET = "test-secret-key-4f9b2c7e1d8a6053"
DB = "llmlb.sqlite3"
FAST = {"LLMLB_ENDPOINT_CHECK_INTERVAL_S": "0.3", "LLMLB_NODE_TIMEOUT_S": "3"}
PLAINTEXT_WARNING = "stored in plain text"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def db_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / DB, data_dir / f"{DB}-wal", data_dir / f"{DB}-shm") if p.exists()]


def raw_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in db_files(data_dir))


def stored_endpoint(data_dir: Path, name: str) -> dict[str, object]:
    with sqlite3.connect(data_dir / DB) as db:
        row = db.execute("SELECT record FROM endpoints WHERE name = ?", (name,)).fetchone()
    return dict(json.loads(row[0]))


def start(tmp_path: Path, procs: list[Proc], data_dir: Path, secret: str | None = None) -> Proc:
    env = dict(FAST, **({"LLMLB_SECRET_KEY": secret} if secret is not None else {}))
    router = router_proc(tmp_path, data_dir=data_dir, env=env)
    procs.append(router)
    return router.start().wait_healthy()


def chat(router: Proc) -> str:
    api_key = create_key(router.url, ["api"])
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0)
    completion = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}]
    )
    return completion.choices[0].message.content or ""


def assert_refused(tmp_path: Path, procs: list[Proc], data_dir: Path, secret: str | None, says: str) -> None:
    env = dict(FAST, **({"LLMLB_SECRET_KEY": secret} if secret is not None else {}))
    router = router_proc(tmp_path, data_dir=data_dir, env=env)
    procs.append(router)
    router.start()
    assert router.popen is not None
    assert router.popen.wait(30) == 2
    output = router.log()
    assert "Traceback" not in output and "ERROR" not in output, output
    last = output.splitlines()[-1]  # before it: INFO lines only (plugins loaded)
    assert last.startswith("llmlb: refusing to start: ") and says in last, output
    assert output.count("refusing to start") == 1
    assert UPSTREAM_KEY not in output and SECRET not in output


def test_data_dir_and_database_are_private_and_loose_ones_are_tightened(
    tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "router-data"
    first = start(tmp_path, procs, data_dir)
    create_key(first.url, ["api"])  # a write: the -wal and -shm files exist while it runs
    assert mode(data_dir) == 0o700
    assert [(p.name, mode(p)) for p in db_files(data_dir)] == [
        (DB, 0o600),
        (f"{DB}-wal", 0o600),
        (f"{DB}-shm", 0o600),
    ]
    first.stop()
    assert "tightened" not in first.log()  # a fresh install is private from the start

    # An install from before: 0755 directory, 0644 database.
    data_dir.chmod(0o755)
    (data_dir / DB).chmod(0o644)
    second = start(tmp_path, procs, data_dir)
    assert mode(data_dir) == 0o700
    # SQLite made the -wal and -shm files with the database's old mode: they are fixed as well.
    modes = {p.name: mode(p) for p in db_files(data_dir)}
    assert modes == {DB: 0o600, f"{DB}-wal": 0o600, f"{DB}-shm": 0o600}
    notes = [line for line in second.log().splitlines() if "tightened permissions" in line]
    assert len(notes) == 1, second.log()
    assert "755->700" in notes[0] and f"{DB} 644->600" in notes[0]


def test_endpoint_key_is_encrypted_at_rest_and_used_after_a_restart(
    tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "router-data"
    with backend("up", ["tiny-chat"]) as up:
        router = start(tmp_path, procs, data_dir, SECRET)
        register_endpoint(router.url, "up", up.url, api_key=UPSTREAM_KEY)
        assert chat(router) == "up heard: hi"
        assert UPSTREAM_KEY.encode() not in raw_bytes(data_dir)  # not even in the write-ahead log
        router.stop()
        record = stored_endpoint(data_dir, "up")
        assert "api_key" not in record and str(record["api_key_sealed"]).startswith("gAAAA")  # Fernet
        assert UPSTREAM_KEY.encode() not in raw_bytes(data_dir)

        up.state.requests.clear()
        again = start(tmp_path, procs, data_dir, SECRET)
        wait_endpoint(again.url, "up")
        assert chat(again) == "up heard: hi"
        assert up.state.requests[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        again.stop()
        for proc in (router, again):
            assert PLAINTEXT_WARNING not in proc.log()
            assert UPSTREAM_KEY not in proc.log() and SECRET not in proc.log()

    assert_refused(tmp_path, procs, data_dir, "another-secret-0123456789", "is not the one")
    assert_refused(tmp_path, procs, data_dir, None, "are encrypted; set secret_key or LLMLB_SECRET_KEY")
    assert_refused(tmp_path, procs, data_dir, "short", "at least 16 characters")


def test_plaintext_keys_warn_once_and_the_first_start_with_a_secret_encrypts_them(
    tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "router-data"
    with backend("up", ["tiny-chat"]) as up:
        plain = start(tmp_path, procs, data_dir)
        register_endpoint(plain.url, "up", up.url, api_key=UPSTREAM_KEY)
        register_endpoint(plain.url, "keyless", up.url + "/nothing-here")
        register_endpoint(plain.url, "elsewhere", up.url + "/nothing-here", api_key="sk-another-upstream-key")
        plain.stop()
        warnings = [line for line in plain.log().splitlines() if PLAINTEXT_WARNING in line]
        assert len(warnings) == 1 and "LLMLB_SECRET_KEY" in warnings[0], plain.log()
        assert stored_endpoint(data_dir, "up")["api_key"] == UPSTREAM_KEY  # what issue 8 found

        restarted = start(tmp_path, procs, data_dir)  # still no secret: one warning at start
        restarted.stop()
        assert sum(PLAINTEXT_WARNING in line for line in restarted.log().splitlines()) == 1

        sealed = start(tmp_path, procs, data_dir, SECRET)
        assert "encrypted 2 endpoint key(s) at rest" in sealed.log()
        assert UPSTREAM_KEY.encode() not in raw_bytes(data_dir)  # the old text is gone from the file
        wait_endpoint(sealed.url, "up")
        assert chat(sealed) == "up heard: hi"
        assert up.state.requests[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        sealed.stop()
        assert PLAINTEXT_WARNING not in sealed.log()
    assert stored_endpoint(data_dir, "keyless").get("api_key") == ""
    assert UPSTREAM_KEY.encode() not in raw_bytes(data_dir)
