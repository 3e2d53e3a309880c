"""Nothing outside the process can forge a log line (issue 17, item 2): one escaping function
for every value in a line (``log_format.log_field``), the request log's fields all through it,
and the text and JSON formats keep any message on one line."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from typing import Any

import pytest

from llmlb_core.server import log_format
from llmlb_core.server.access_log import RequestRecord
from llmlb_core.server.log_format import escape_text, log_field, log_list

# What an attacker would put in a field: a new line that starts a forged one, a carriage return,
# the Unicode line separators, a terminal escape, a bidi override, quotes and spaces that would
# start another key=value field.
HOSTILE = 'x\nFORGED-LINE 2026-01-01 INFO llmlb.access: ok\r\u2028\u2029\x1b[2J\u202e" node=forged \\'


def hostile_record() -> RequestRecord:
    """A record whose every text field (strings, lists and dicts of strings) holds ``HOSTILE``:
    a field added later without escaping fails the tests below."""
    record = RequestRecord(HOSTILE, HOSTILE, status=200, duration_s=1.0, images=1, generation_s=1.0, steps=1)
    record.queue_wait_s = 0.5
    for spec in dataclasses.fields(record):
        value = getattr(record, spec.name)
        if isinstance(value, str) or (value is None and "str" in str(spec.type)):
            setattr(record, spec.name, HOSTILE)
        elif isinstance(value, list):
            value.extend([HOSTILE, "ok"])
        elif isinstance(value, dict):
            value[HOSTILE] = HOSTILE
    return record


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("plain-word_1.2/3:4", "plain-word_1.2/3:4"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a\nb", '"a\\nb"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("\x1b[2J", '"\\x1b[2J"'),
        ("\u2028", '"\\u2028"'),
        ("\u202e", '"\\u202e"'),
        ("caf\u00e9", "caf\u00e9"),
        (42, "42"),
    ],
)
def test_log_field_keeps_one_printable_word_and_escapes_the_rest(value: object, logged: str) -> None:
    assert log_field(value) == logged


def test_every_field_of_the_request_log_is_escaped() -> None:
    line = hostile_record().line()
    assert "\n" not in line and "\r" not in line and line.isprintable(), repr(line)
    assert "FORGED-LINE" in line  # kept, but inside a quoted value
    # Each escaped value reads back as what was sent, and nothing outside them looks like a field.
    quoted = re.findall(r'"(?:[^"\\]|\\.)*"', line)
    values = {q[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape") for q in quoted}
    assert values == {HOSTILE, f"{HOSTILE},ok"}, values
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', "", line)
    assert "node=forged" not in outside and "FORGED" not in outside


def test_the_text_format_keeps_any_message_on_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_format.TextFormatter())
    logger = logging.getLogger("llmlb.test-escaping")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("node %s said %s", "n1", HOSTILE)
        logger.info(hostile_record().line())
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert all(line.isprintable() and not line.startswith("FORGED") for line in lines), lines
    assert "\\nFORGED-LINE" in lines[0] and "\\u2028" in lines[0] and "\\x1b" in lines[0]


def test_a_traceback_stays_after_its_one_line_message() -> None:
    formatter = log_format.TextFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "bad %s", (HOSTILE,), None)
        record.exc_info = __import__("sys").exc_info()
    text = formatter.format(record)
    first, *rest = text.splitlines()
    assert first.isprintable() and "Traceback" in rest[0]


def test_the_json_format_is_one_line_that_reads_back_as_sent() -> None:
    record = logging.LogRecord("llmlb.access", logging.INFO, "f", 1, HOSTILE, None, None)
    record.access = hostile_record()
    text = log_format.JsonFormatter().format(record)
    assert text.isprintable() and "\n" not in text, repr(text)
    data: dict[str, Any] = json.loads(text)
    assert data["message"] == HOSTILE and data["model"] == HOSTILE and data["method"] == HOSTILE


def test_escape_text_and_log_list() -> None:
    assert escape_text("all fine: a b") == "all fine: a b"
    assert escape_text("a\nb\tc") == "a\\nb\\tc"
    assert log_list([]) == "-"
    assert log_list(["a", "b c"]) == 'a, "b c"'
    assert log_list([f"m{i}" for i in range(12)], limit=2) == "m0, m1 (+10 more)"
