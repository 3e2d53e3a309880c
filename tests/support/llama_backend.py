"""A real OpenAI-compatible text server for tests: llama-cpp-python's server on a tiny model.

The model is a random-weight LLaMA written here with the ``gguf`` package: 2 layers, 64 hidden,
4 heads, a 512-token context, and a SentencePiece-style vocabulary (control tokens, the 256
byte-fallback tokens, letters and a few words, so any text tokenizes). It is written once into
the ignored ``.cache/`` folder and reused. Its output is noise, but every byte of the HTTP
exchange (JSON, server-sent events, errors, auth) is the real server's. A second file with mean
pooling serves ``/v1/embeddings``.

The server runs as a subprocess (``python -m llama_cpp.server --config_file ...``) on a free
loopback port and is stopped by the fixture that started it, whatever happens.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import REPO, free_port, wait_until

CACHE = REPO / ".cache" / "llama-models"
CHAT_FILE = "tiny-llama-chat.gguf"
EMBED_FILE = "tiny-llama-embed.gguf"
FORMAT_VERSION = "1"  # bump to rewrite the cached files
CHAT_MODEL = "tiny-llama"
EMBED_MODEL = "tiny-llama-embed"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["the", "and", "hello", "world", "llm", "router", "test", "is", "a", "of", "to", "in"]


def available() -> str | None:
    """Why the real server cannot run here (None: it can)."""
    for module, package in (("llama_cpp", "llama-cpp-python[server]"), ("gguf", "gguf")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install -e '.[test]')"
    if importlib.util.find_spec("sse_starlette") is None:
        return "llama-cpp-python's server extra is not installed ('llama-cpp-python[server]')"
    return None


def _vocab() -> tuple[list[str], list[float], list[int]]:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581", *"abcdefghijklmnopqrstuvwxyz", *(f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    pieces += [f"\u2581{w}" for w in WORDS if f"\u2581{w}" not in pieces]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def _write(path: Path, *, pooling: bool, seed: int = 0) -> None:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab, n_embd, n_ff, n_head, n_layer = len(tokens), 64, 128, 4, 2

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tmp = path.with_suffix(".part")
    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    writer.add_name("llmlb test tiny llama (random weights)")
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if pooling:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)


def tiny_llama_files(folder: Path = CACHE) -> tuple[Path, Path]:
    """The chat and embedding GGUF files, written on first use (a fraction of a second)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "version"
    chat, embed = folder / CHAT_FILE, folder / EMBED_FILE
    if not (stamp.exists() and stamp.read_text() == FORMAT_VERSION and chat.exists() and embed.exists()):
        _write(chat, pooling=False)
        _write(embed, pooling=True)
        stamp.write_text(FORMAT_VERSION)
    return chat, embed


@dataclass
class LlamaServer:
    url: str
    api_key: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def llama_server(tmp: Path, api_key: str) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server on the tiny models, on a loopback port."""
    chat, embed = tiny_llama_files()
    port = free_port()
    common = {"n_ctx": 512, "n_threads": 1, "n_batch": 64, "verbose": False}
    config = {
        "host": "127.0.0.1",
        "port": port,
        "api_key": api_key,
        # Default True: any concurrent request, even the router's GET /v1/models health check,
        # aborts a running stream mid-body. Operators must turn it off behind a balancer.
        "interrupt_requests": False,
        "models": [
            {"model": str(chat), "model_alias": CHAT_MODEL, **common},
            {"model": str(embed), "model_alias": EMBED_MODEL, "embedding": True, **common},
        ],
    }
    config_path = tmp / "llama-server.json"
    config_path.write_text(json.dumps(config))
    log_path = tmp / "llama-server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=env,
        start_new_session=True,
    )
    server = LlamaServer(f"http://127.0.0.1:{port}", api_key, popen, log_path)
    try:

        def ready() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {popen.returncode}:\n{server.log()}")
            headers = {"authorization": f"Bearer {api_key}"}
            return httpx.get(f"{server.url}/v1/models", headers=headers, timeout=2).status_code == 200

        wait_until(ready, 60, "llama_cpp.server")
        yield server
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)
        log.close()
