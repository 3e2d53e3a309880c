"""Router <-> node over TLS, with a CA made by the test (``trustme``), through real processes.

- A node serving HTTPS registers an ``https://`` base_url with a router that trusts the CA
  (``LLMLB_NODE_CA_BUNDLE``) and requires TLS (``LLMLB_REQUIRE_NODE_TLS``): a real image is
  generated through it, and a plain-HTTP registration is a 400.
- A router without the CA, or a node certificate for another host name, gives the client an
  OpenAI-shaped 502 (never a 500), and the router says why in its log.
- A router serving HTTPS is reached by a node only when the node has ``--router-ca-bundle``.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from tests.support.servers import (
    ADMIN_KEY,
    Proc,
    create_key,
    free_port,
    node_proc,
    node_status,
    router_proc,
    wait_until,
)

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Pki:
    ca: Path
    cert: Path  # for 127.0.0.1 and localhost
    key: Path
    other_cert: Path  # a valid certificate, but for another host name
    other_key: Path
    context: ssl.SSLContext  # a client context that trusts the CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    for stem, names in (("node", ("127.0.0.1", "localhost")), ("other", ("other.example",))):
        issued = ca.issue_cert(*names)
        issued.cert_chain_pems[0].write_to_path(str(folder / f"{stem}.pem"))
        issued.private_key_pem.write_to_path(str(folder / f"{stem}-key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return Pki(
        ca=folder / "ca.pem",
        cert=folder / "node.pem",
        key=folder / "node-key.pem",
        other_cert=folder / "other.pem",
        other_key=folder / "other-key.pem",
        context=context,
    )


def _alive(proc: Proc) -> bool:
    assert proc.popen is not None
    if proc.popen.poll() is not None:
        raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.log()}")
    return True


def start_router(tmp_path: Path, procs: list[Proc], env: dict[str, str]) -> Proc:
    router = router_proc(tmp_path, env={"LLMLB_NODE_TIMEOUT_S": "3", **env})
    procs.append(router)
    return router.start().wait_healthy()


def start_tls_node(
    tmp_path: Path,
    procs: list[Proc],
    router: Proc,
    models_dir: Path,
    cert: Path,
    key: Path,
    *,
    name: str,
    extra: list[str] | None = None,
    node_key: str | None = None,
    online: Callable[[str, str], bool] | None = None,
) -> Proc:
    port = free_port()
    proc = node_proc(
        tmp_path,
        router.url,
        models_dir,
        node_key or create_key(router.url, ["node"], name=name),
        port=port,
        name=name,
        extra=["--threads", "2", "--tls-cert", str(cert), "--tls-key", str(key), *(extra or [])],
    )
    proc.url = f"https://127.0.0.1:{port}"
    procs.append(proc)
    proc.start()
    is_online = online or (lambda url, n: node_status(url, n) == "online")
    wait_until(lambda: _alive(proc) and is_online(router.url, name), 60, f"{name} online")
    return proc


def generate(router: Proc, api_key: str) -> openai.types.ImagesResponse:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0)
    return client.images.generate(
        model="demo",
        prompt="a lighthouse",
        size="256x256",
        response_format="b64_json",
        extra_body={"steps": 1},
    )


def assert_upstream_refused(router: Proc, api_key: str) -> None:
    response = httpx.post(
        f"{router.url}/v1/images/generations",
        json={"model": "demo", "prompt": "x", "size": "256x256", "response_format": "b64_json", "steps": 1},
        headers={"authorization": f"Bearer {api_key}"},
        timeout=60,
    )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_unreachable"
    wait_until(lambda: "certificate verify failed" in router.log().lower(), 10, "the TLS reason logged")
    assert "Traceback" not in router.log()


def test_https_node_serves_an_image_through_a_router_that_trusts_its_ca(
    tmp_path: Path, procs: list[Proc], models_dir: Path, pki: Pki
) -> None:
    router = start_router(
        tmp_path, procs, {"LLMLB_NODE_CA_BUNDLE": str(pki.ca), "LLMLB_REQUIRE_NODE_TLS": "true"}
    )
    node = start_tls_node(tmp_path, procs, router, models_dir, pki.cert, pki.key, name="tls-node")
    listed = httpx.get(f"{router.url}/v0/nodes", headers=ADMIN, timeout=10).json()["data"]
    assert [n["base_url"] for n in listed if n["name"] == "tls-node"] == [node.url]
    assert node.url.startswith("https://")
    # The node speaks only TLS, and its certificate chains to the test's CA.
    with pytest.raises(httpx.HTTPError):
        httpx.get(node.url.replace("https://", "http://") + "/health", timeout=5)
    assert httpx.get(f"{node.url}/health", verify=pki.context, timeout=5).status_code == 200

    result = generate(router, create_key(router.url, ["api"]))
    assert result.data[0].b64_json
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")

    # require_node_tls: a plain-HTTP node is refused at registration.
    plain = httpx.post(
        f"{router.url}/v0/nodes/register",
        json={
            "node_id": "plain",
            "name": "plain",
            "base_url": "http://127.0.0.1:9",
            "token": "t" * 32,
            "runtime_types": ["stable_diffusion"],
            "models": [],
        },
        headers={"authorization": f"Bearer {create_key(router.url, ['node'], name='plain')}"},
        timeout=10,
    )
    assert plain.status_code == 400, plain.text
    assert plain.json()["error"]["code"] == "node_tls_required"
    assert node_status(router.url, "plain") is None


def test_router_without_the_ca_refuses_the_node(
    tmp_path: Path, procs: list[Proc], models_dir: Path, pki: Pki
) -> None:
    router = start_router(tmp_path, procs, {})  # the system trust store: the test CA is not in it
    start_tls_node(tmp_path, procs, router, models_dir, pki.cert, pki.key, name="untrusted")
    assert_upstream_refused(router, create_key(router.url, ["api"]))


def test_node_certificate_for_another_host_name_is_refused(
    tmp_path: Path, procs: list[Proc], models_dir: Path, pki: Pki
) -> None:
    router = start_router(tmp_path, procs, {"LLMLB_NODE_CA_BUNDLE": str(pki.ca)})
    start_tls_node(tmp_path, procs, router, models_dir, pki.other_cert, pki.other_key, name="misnamed")
    assert_upstream_refused(router, create_key(router.url, ["api"]))


def test_node_reaches_an_https_router_only_with_the_router_ca(
    tmp_path: Path, procs: list[Proc], models_dir: Path, pki: Pki
) -> None:
    port = free_port()
    router = router_proc(
        tmp_path,
        port=port,
        env={
            "LLMLB_TLS_CERT": str(pki.cert),
            "LLMLB_TLS_KEY": str(pki.key),
            "LLMLB_NODE_CA_BUNDLE": str(pki.ca),
        },
    )
    router.url = f"https://127.0.0.1:{port}"
    procs.append(router)
    router.start()
    wait_until(
        lambda: (
            _alive(router)
            and httpx.get(f"{router.url}/health", verify=pki.context, timeout=1).status_code == 200
        ),
        30,
        "the HTTPS router",
    )

    def key(name: str) -> str:
        response = httpx.post(
            f"{router.url}/v0/keys",
            json={"name": name, "scopes": ["node"]},
            headers=ADMIN,
            verify=pki.context,
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["key"])

    def online(url: str, name: str) -> bool:
        nodes = httpx.get(f"{url}/v0/nodes", headers=ADMIN, verify=pki.context, timeout=5).json()["data"]
        return any(n["name"] == name and n["status"] == "online" for n in nodes)

    start_tls_node(
        tmp_path,
        procs,
        router,
        models_dir,
        pki.cert,
        pki.key,
        name="trusting",
        extra=["--router-ca-bundle", str(pki.ca)],
        node_key=key("trusting"),
        online=online,
    )
    # Without the bundle the node cannot verify the router: it says so and keeps retrying.
    stranger = node_proc(tmp_path, router.url, models_dir, key("stranger"), name="stranger")
    procs.append(stranger)
    stranger.start()
    wait_until(
        lambda: _alive(stranger) and "--router-ca-bundle" in stranger.log(), 30, "the node's TLS error"
    )
    assert "certificate verify failed" in stranger.log()
    assert "Traceback" not in stranger.log()
    assert not online(router.url, "stranger")
