"""Settings problems in an operator's words: the key, its variable, what was expected and what was
given, near misses for misspelt names, every problem of a table (``llmlb config check``), and the
``LLMLB_*`` / ``LLMLB_NODE_*`` variables that nothing reads."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from llmlb_core.config.problems import table_problems, unknown_variables
from llmlb_core.config.settings import SettingsError, load_plugin_settings, load_settings, router_env_problems
from llmlb_node.settings import load_node_settings, load_runtime_settings, node_env_problems


class Sample(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    ratio: float = 0.5
    mode: Literal["fast", "slow"] | None = None
    names: list[str] = msgspec.field(default_factory=list)


class Needs(msgspec.Struct, kw_only=True):
    url: str
    slots: int = 1


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (
            {"enabled": "yes"},
            "invalid setting [plugin.sample] enabled (env LLMLB_PLUGIN__SAMPLE__ENABLED): "
            "expected true or false, got 'yes'",
        ),
        (
            {"workers": 0},
            "invalid setting [plugin.sample] workers (env LLMLB_PLUGIN__SAMPLE__WORKERS): "
            "expected an integer >= 1, got 0",
        ),
        ({"ratio": "half"}, "ratio (env LLMLB_PLUGIN__SAMPLE__RATIO): expected a number, got 'half'"),
        (
            {"mode": "turbo"},
            "mode (env LLMLB_PLUGIN__SAMPLE__MODE): expected one of 'fast', 'slow', got 'turbo'",
        ),
        ({"names": [1]}, "names (env LLMLB_PLUGIN__SAMPLE__NAMES): expected a string, got [1]"),
        (
            {"workrs": 2},
            "unknown setting [plugin.sample] workrs (env LLMLB_PLUGIN__SAMPLE__WORKRS; "
            "did you mean workers?)",
        ),
    ],
)
def test_a_bad_plugin_value_is_one_line_naming_key_variable_type_and_value(
    table: dict[str, object], says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_plugin_settings("sample", table, Sample)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value) and "`" not in str(caught.value)


def test_every_problem_of_a_table_is_its_own_line() -> None:
    problems = table_problems(
        {"enabled": "yes", "workers": 0, "ratio": 1.0, "wat": 1}, Sample, where="[x]", env_prefix="X_"
    )
    assert problems == [
        "invalid setting [x] enabled (env X_ENABLED): expected true or false, got 'yes'",
        "invalid setting [x] workers (env X_WORKERS): expected an integer >= 1, got 0",
        "unknown setting [x] wat (env X_WAT)",
    ]
    assert table_problems({"ratio": 1.0}, Sample, env_prefix="X_") == []
    # A problem no key has on its own (a required key missing) is reported once.
    assert table_problems({"slots": 2}, Needs, env_prefix="X_") == ["missing setting url (env X_URL)"]


def test_router_and_node_settings_name_their_variables_and_take_any_case_log_levels() -> None:
    with pytest.raises(
        SettingsError, match=r"^invalid setting port \(env LLMLB_PORT\): expected an integer, got 'x'$"
    ):
        load_settings(environ={"LLMLB_PORT": "x"})
    with pytest.raises(
        SettingsError, match=r"^unknown setting prot \(env LLMLB_PROT; did you mean port\?\)$"
    ):
        load_settings(environ={}, prot=1)
    assert load_settings(environ={"LLMLB_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(
        SettingsError, match=r"log_level \(env LLMLB_LOG_LEVEL\): expected one of debug, info, "
    ):
        load_settings(environ={"LLMLB_LOG_LEVEL": "loud"})
    assert load_node_settings(environ={"LLMLB_NODE_LOG_LEVEL": "Warning"}).log_level == "WARNING"
    with pytest.raises(
        SettingsError, match=r"^invalid node setting log_format \(env LLMLB_NODE_LOG_FORMAT\): "
    ):
        load_node_settings(environ={"LLMLB_NODE_LOG_FORMAT": "xml"})


def test_variables_nothing_reads_are_named_with_their_near_miss() -> None:
    environ = {
        "LLMLB_PORT": "1",
        "LLMLB_PROT": "1",
        "LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK": "true",
        "LLMLB_PLUGIN__IMAGES_SIZE_FALLBACK": "true",
        "LLMLB_CONFIG": "r.toml",
        "LLMLB_ROUTER": "http://r",
        "LLMLB_NODE_PORT": "1",  # the node's
        "LLMLB_NODE_PROT": "1",  # the node's to flag
        "LLMLB_NODE_TIMEOUT_S": "5",  # the router's own node_timeout_s
        "LLMLB_NODE_RUNTIME__STABLE_DIFFUSION__THREADS": "2",
        "LLMLB_NODE_THREADS": "2",  # a runtime flag's variable
        "LLMLB_NODE_CONFIG": "n.toml",
        "OTHER_PROT": "1",
    }
    assert router_env_problems(environ, also_known={"LLMLB_ROUTER"}) == [
        "unknown environment variable LLMLB_PLUGIN__IMAGES_SIZE_FALLBACK ignored",
        "unknown environment variable LLMLB_PROT ignored (did you mean LLMLB_PORT?)",
    ]
    assert node_env_problems(environ, also_known={"LLMLB_NODE_THREADS"}) == [
        "unknown environment variable LLMLB_NODE_PROT ignored (did you mean LLMLB_NODE_PORT?)"
    ]
    assert unknown_variables({"A_x": "1"}, prefix="A_", known={"A_X"}) == []  # names in any case


class Lists(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    words: list[str] = msgspec.field(default_factory=list)
    sizes: frozenset[int] | None = None
    name: str = ""  # a text field keeps its commas
    either: list[str] | str = ""  # takes a string as it is


@pytest.mark.parametrize("text", ["a,b", " a , b ,", '["a", "b"]', ' ["a","b"] '])
def test_a_list_setting_of_a_plugin_table_comes_from_text_comma_separated_or_json(text: str) -> None:
    loaded = load_plugin_settings(
        "lists", {"words": text, "sizes": "1,2", "name": "x,y", "either": "p,q"}, Lists
    )
    assert loaded == Lists(words=["a", "b"], sizes=frozenset({1, 2}), name="x,y", either="p,q")
    assert load_plugin_settings("lists", {"words": '["a,b", "c"]'}, Lists).words == ["a,b", "c"]
    assert load_plugin_settings("lists", {"words": ""}, Lists).words == []
    assert load_plugin_settings("lists", {"words": ["t"]}, Lists).words == ["t"]  # TOML's own list


def test_list_settings_come_from_the_environment_of_router_and_node() -> None:
    environ = {
        "LLMLB_CAPABILITIES": '["text", "images"]',
        "LLMLB_PLUGIN__LISTS__WORDS": "a,b",
        "LLMLB_PLUGIN__LISTS__SIZES": "[3, 4]",
    }
    router = load_settings(None, environ=environ)
    assert router.capabilities == ["text", "images"]
    assert load_plugin_settings("lists", router.plugin_settings("lists"), Lists).sizes == frozenset({3, 4})
    node = load_node_settings(
        None, environ={"LLMLB_NODE_RUNTIMES": "a, b", "LLMLB_NODE_RUNTIME__LISTS__WORDS": '["x", "y"]'}
    )
    assert node.runtimes == ["a", "b"]
    assert load_runtime_settings("lists", node.runtime_settings["lists"], Lists).words == ["x", "y"]
    assert load_settings(None, environ={"LLMLB_CAPABILITIES": "text,images"}).capabilities == [
        "text",
        "images",
    ]


def test_a_bad_list_item_names_the_key_and_says_what_the_environment_takes() -> None:
    with pytest.raises(SettingsError) as caught:
        load_runtime_settings("lists", {"sizes": "1,two"}, Lists)
    assert "[runtime.lists] sizes (env LLMLB_NODE_RUNTIME__LISTS__SIZES)" in str(caught.value)
    assert table_problems({"words": 3}, Lists, env_prefix="X_") == [
        "invalid setting words (env X_WORDS): expected a list (TOML [...]; in the environment a,b "
        "or a JSON array [...]), got 3"
    ]
    with pytest.raises(SettingsError) as caught:  # a JSON array that does not parse is not a list
        load_plugin_settings("lists", {"words": '["a", "b"'}, Lists)
    assert 'a JSON array [...]), got \'["a", "b"\'' in str(caught.value)
