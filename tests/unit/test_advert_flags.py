"""How the router gives flags to the models of OpenAI-compatible servers, knowing no flag
names itself: adverts carry what was declared (or nothing, with the server's kind), and
:class:`FlagRules` expands aliases and fills in what the capabilities declare when the router
takes an advert in (``LoadedPlugins.upstream_flags`` itself: tests/unit/test_upstream_flags.py).
Also the typed error for a model list that did not come in time: an endpoint's health check
treats a busy server as alive on it, never on the message text."""

from __future__ import annotations

import httpx
import pluggy
import pytest

from llmlb_core.capability import Capability, NoSettings, UpstreamFlags
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.protocol import ModelAdvert
from llmlb_core.router.flag_rules import FlagRules
from llmlb_core.upstream.openai_servers import (
    ModelListTimeout,
    UpstreamError,
    build_adverts,
    fetch_model_ids,
)


def _capability(
    name: str, flags: set[str], upstream: UpstreamFlags, aliases: dict[str, frozenset[str]]
) -> Capability[NoSettings]:
    return Capability(
        name=name,
        model_flags=frozenset(flags),
        build_routes=lambda context: [],
        upstream_flags=upstream,
        flag_aliases=aliases,
    )


def _plugins() -> LoadedPlugins:
    talk = _capability(
        "talk",
        {"chat", "complete"},
        UpstreamFlags(fallback=frozenset({"chat", "complete"})),
        {"talking": frozenset({"chat", "complete"}), "both": frozenset({"chat"})},
    )
    hear = _capability(
        "hear",
        {"listen"},
        UpstreamFlags(match=lambda model_id, kind: frozenset({"listen"} if kind == "whisper_cpp" else ())),
        {"both": frozenset({"listen"})},
    )
    capabilities = {c.name: c for c in (talk, hear)}
    return LoadedPlugins(
        manager=pluggy.PluginManager("llmlb"), capabilities=capabilities, enabled=list(capabilities)
    )


def test_adverts_carry_declared_flags_or_none() -> None:
    adverts = build_adverts(
        ["a", "b", "c"],
        kind="vllm",
        runtime="openai_compatible",
        capabilities=["z", "y", "y"],
        model_capabilities={"b": ["talking"], "c": []},
        details={"upstream_kind": "vllm"},
    )
    assert [(a.id, a.capabilities) for a in adverts] == [("a", ["y", "z"]), ("b", ["talking"]), ("c", [])]
    assert adverts[0].details == {"kind": "vllm", "upstream_kind": "vllm"}
    undeclared = build_adverts(["m"], kind="llama_cpp", runtime="llama_cpp")
    assert undeclared[0].capabilities == []


def test_adverts_need_a_model_list_or_declared_models() -> None:
    assert [a.id for a in build_adverts(None, kind="whisper_cpp", runtime="x", models=["w"])] == ["w"]
    assert [a.id for a in build_adverts(["a", "b"], kind="generic", runtime="x", models=["b"])] == ["b"]
    with pytest.raises(UpstreamError, match="declare its models"):
        build_adverts(None, kind="whisper_cpp", runtime="x")


def test_aliases_merge_across_capabilities_and_expand() -> None:
    rules = FlagRules(_plugins())
    assert rules.aliases["both"] == frozenset({"chat", "listen"})
    assert rules.expand(["talking", "listen"]) == ["chat", "complete", "listen"]
    assert rules.unknown(["both", "nope"]) == ["nope"]


def test_undeclared_models_get_what_the_capabilities_give_their_kind() -> None:
    rules = FlagRules(_plugins())
    chat = ModelAdvert(id="m", capabilities=[], runtime="openai_compatible", details={"kind": "vllm"})
    assert rules.advert(chat).capabilities == ["chat", "complete"]
    older = ModelAdvert(
        id="m", capabilities=[], runtime="openai_compatible", details={"upstream_kind": "whisper_cpp"}
    )
    assert rules.advert(older).capabilities == ["listen"]


def test_declared_flags_are_kept_and_aliases_expanded() -> None:
    rules = FlagRules(_plugins())
    plain = ModelAdvert(id="m", capabilities=["listen"], runtime="x", details={"kind": "vllm"})
    assert rules.advert(plain) is plain
    aliased = ModelAdvert(id="m", capabilities=["talking"], runtime="x")
    assert rules.advert(aliased).capabilities == ["chat", "complete"]
    # No kind: not an OpenAI-compatible server's model, nothing to fill in.
    bare = ModelAdvert(id="m", capabilities=[], runtime="x", details={"kind": 3})
    assert rules.advert(bare) is bare


async def test_a_model_list_that_does_not_come_in_time_is_a_typed_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ModelListTimeout):
            await fetch_model_ids(client, "http://upstream", None, timeout_s=1)


async def test_other_model_list_failures_are_not_timeouts() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamError) as failed:
            await fetch_model_ids(client, "http://upstream", None, timeout_s=1)
    assert not isinstance(failed.value, ModelListTimeout)
