from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from torch import nn

from tests.nets import TinyNet, randomize_bn


@pytest.fixture(scope="session", autouse=True)
def _layer_cache(tmp_path_factory):
    """Profiles in the tests share one converted-layer cache of their own, never the user's."""
    import os

    old = os.environ.get("EDGEPRUNE_LAYER_CACHE")
    os.environ["EDGEPRUNE_LAYER_CACHE"] = str(tmp_path_factory.mktemp("layer-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEPRUNE_LAYER_CACHE", None)
    else:
        os.environ["EDGEPRUNE_LAYER_CACHE"] = old


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyNet())


class AgentProcess:
    """A real `edgeprune agent --listen 127.0.0.1:0` process; ``port`` is the one it bound. Its
    stderr goes to a file (the runtimes log there; a pipe nobody reads would fill and block it)."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "agent", "--listen",
                                      "127.0.0.1:0", *args], stderr=self.log, text=True)
        deadline = time.monotonic() + 120
        m = None
        while m is None and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            self.log.seek(0)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read())
        if m is None:
            self.log.seek(0)
            text = self.log.read()
            self.stop()
            raise RuntimeError(f"the agent did not start: {text[-500:]!r}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def http_agent():
    agent = AgentProcess()
    yield agent
    agent.stop()


@pytest.fixture
def agent_target(tmp_path):
    """A target file for an agent on loopback at ``port`` (the measurement protocol short)."""

    def make(port: int, *, name: str = "loop-agent", token_env: str = "", runtime: str = "litert",
             passes: int = 2, runs: int = 10, timeout_s: float = 20) -> str:
        p = tmp_path / f"{name}.toml"
        p.write_text(f'name = "{name}"\nruntime = "{runtime}"\nthreads = 1\nround_to = 16\n'
                     f'connection = "agent://127.0.0.1:{port}"\ntoken_env = "{token_env}"\n'
                     f"timeout_s = {timeout_s}\n[measure]\nwarmup = 2\nruns = {runs}\npasses = {passes}\n")
        return str(p)

    return make
