"""Targets: a device + runtime + settings, as data (``edgeprune/targets/*.toml``).

``load_target("host-litert")`` reads ``host-litert.toml`` shipped in this package (so an
installed edgeprune finds them); ``load_target("path/to/my-device.toml")`` reads any file.
Unknown keys and invalid values raise :class:`ConfigError` naming the field. Torch-free.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import ConfigError, TargetNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TARGETS_DIR = Path(__file__).resolve().parent
RUNTIMES = ("litert", "onnxruntime", "coreml", "macs")
PRECISIONS = ("fp32", "fp16", "int8")
# the file a runtime that edgeprune times loads (its converters write these)
ARTIFACT_SUFFIX = {"litert": ".tflite", "onnxruntime": ".onnx"}
# local: this machine; agent://HOST:PORT: an `edgeprune agent --listen` over HTTP;
# ssh://[USER@]HOST[:PORT]: the agent streamed to the device's python3 over ssh (stdio);
# qemu://CPU: the emulated aarch64 runtime of `make arm64-runtime` (stdio; never timed)
CONNECTION_SCHEMES = ("local", "agent://", "ssh://", "qemu://")
# what each runtime's ``delegate`` may name; the first is the default. LiteRT: "xnnpack" (its
# default delegate, on) or "none" (builtin kernels only); ONNX Runtime: its CPU provider;
# CoreML: the compute units a device may use (not run by edgeprune off Apple hardware).
DELEGATES = {"litert": ("xnnpack", "none"), "onnxruntime": ("cpu",),
             "coreml": ("all", "cpu", "cpu_and_gpu", "cpu_and_ne"), "macs": ("none",)}


@dataclass(frozen=True)
class MeasureProtocol:
    """``passes`` rounds of (``warmup`` untimed runs, ``runs`` timed runs); the fastest pass's
    median is reported. Several artifacts timed together are interleaved pass by pass, so drift
    on the machine hits them alike. A pass starts at least ``pass_interval_s`` after the one
    before it (the same artifact's), so that the passes of a short measurement sample the
    machine's state at different moments instead of all within one slow spell."""

    warmup: int = 10
    runs: int = 50
    passes: int = 3
    pass_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"measure.warmup = {self.warmup!r} is invalid; need an integer >= 0")
        if not isinstance(self.runs, int) or self.runs < 5:
            raise ConfigError(f"measure.runs = {self.runs!r} is invalid; need an integer >= 5 "
                              "(a median of fewer runs is noise)")
        if not isinstance(self.passes, int) or self.passes < 1:
            raise ConfigError(f"measure.passes = {self.passes!r} is invalid; need an integer >= 1")
        if (isinstance(self.pass_interval_s, bool) or not isinstance(self.pass_interval_s, (int, float))
                or not 0 <= self.pass_interval_s <= 60):
            raise ConfigError(f"measure.pass_interval_s = {self.pass_interval_s!r} is invalid; need "
                              "seconds in [0, 60]")


@dataclass(frozen=True)
class Target:
    """Where and how a model runs. ``threads = 0`` means the runtime's own default."""

    name: str
    runtime: str
    precision: str = "fp32"
    threads: int = 1
    delegate: str = ""  # "" = the runtime's default (DELEGATES)
    round_to: int = 8
    connection: str = "local"
    description: str = ""
    device: str = ""
    token_env: str = ""  # agent://: the environment variable that holds the agent's token
    remote_python: str = "python3"  # ssh://: the device's Python (with numpy and the runtime)
    timeout_s: float = 30.0  # reaching the device: a clear error after this long
    measure: MeasureProtocol = field(default_factory=MeasureProtocol)
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"target name {self.name!r} is invalid; need a non-empty string")
        where = f"target {self.name!r}"
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"{where}: runtime = {self.runtime!r} is invalid; use one of {RUNTIMES}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision = {self.precision!r} is invalid; use one of {PRECISIONS}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"{where}: threads = {self.threads!r} is invalid; need an integer >= 0 "
                              "(0 = runtime default)")
        allowed = DELEGATES[self.runtime]
        if self.delegate == "":
            object.__setattr__(self, "delegate", allowed[0])
        elif self.delegate not in allowed:
            raise ConfigError(f"{where}: delegate = {self.delegate!r} is invalid for runtime "
                              f"{self.runtime!r}; use one of {allowed}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"{where}: round_to = {self.round_to!r} is invalid; need an integer >= 1")
        if not isinstance(self.connection, str) or not self.connection.startswith(CONNECTION_SCHEMES):
            raise ConfigError(f"{where}: connection = {self.connection!r} is invalid; use 'local', "
                              "'agent://host:port', 'ssh://user@host' or 'qemu://cpu'")
        if self.connection.startswith("agent://"):
            host, _, port = self.connection[len("agent://"):].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{where}: connection = {self.connection!r} needs a host and a port, "
                                  "e.g. 'agent://raspberrypi.local:7420'")
        if self.connection.startswith(("ssh://", "qemu://")) and len(self.connection.split("://", 1)[1]) == 0:
            raise ConfigError(f"{where}: connection = {self.connection!r} names no host or CPU")
        if not isinstance(self.token_env, str) or (self.token_env and not self.token_env.isidentifier()):
            raise ConfigError(f"{where}: token_env = {self.token_env!r} must name an environment "
                              "variable, e.g. 'EDGEPRUNE_PI4_TOKEN' (the token itself never goes in a file)")
        if not isinstance(self.remote_python, str) or not self.remote_python.strip() or any(
                c in self.remote_python for c in ";&|`$\n"):
            raise ConfigError(f"{where}: remote_python = {self.remote_python!r} must be a path to the "
                              "device's python, e.g. '~/edgeprune/bin/python'")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ConfigError(f"{where}: timeout_s = {self.timeout_s!r} is invalid; need seconds > 0")
        if self.measure.pass_interval_s and not self.is_local:
            raise ConfigError(f"{where}: measure.pass_interval_s = {self.measure.pass_interval_s!r}: "
                              "the device agent does not space its passes yet; remove it (it applies "
                              "to local targets only)")

    @property
    def is_local(self) -> bool:
        """Runs on this machine, in this process's runtimes."""
        return self.connection == "local"

    @property
    def is_emulated(self) -> bool:
        """The emulated aarch64 runtime: computes like the device, times like nothing."""
        return self.connection.startswith("qemu://")

    @property
    def is_device(self) -> bool:
        """Reached through the device agent (HTTP, ssh or emulation)."""
        return not self.is_local

    @property
    def is_analytical(self) -> bool:
        return self.runtime == "macs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "runtime": self.runtime, "precision": self.precision,
            "threads": self.threads, "delegate": self.delegate, "round_to": self.round_to,
            "connection": self.connection, "description": self.description, "device": self.device,
            "token_env": self.token_env, "remote_python": self.remote_python,
            "timeout_s": self.timeout_s,
            "measure": {"warmup": self.measure.warmup, "runs": self.measure.runs,
                        "passes": self.measure.passes, "pass_interval_s": self.measure.pass_interval_s},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, path: str | None = None) -> Target:
        d = dict(d)
        known = {"name", "runtime", "precision", "threads", "delegate", "round_to", "connection",
                 "description", "device", "token_env", "remote_python", "timeout_s", "measure"}
        unknown = sorted(set(d) - known)
        where = f"target {d.get('name', path)!r}"
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        for key in ("name", "runtime"):
            if key not in d:
                raise ConfigError(f"{where}: missing required field {key!r}")
        for section, typ in (("measure", MeasureProtocol),):
            sub = d.get(section, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{where}: [{section}] must be a table")
            valid = set(typ.__dataclass_fields__)
            bad = sorted(set(sub) - valid)
            if bad:
                raise ConfigError(f"{where}: unknown field(s) {[f'{section}.{b}' for b in bad]}; "
                                  f"valid: {sorted(valid)}")
            try:
                d[section] = typ(**sub)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        return cls(**d, path=path)


def target_names() -> list[str]:
    """Names of the targets shipped with edgeprune."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml")) if TARGETS_DIR.is_dir() else []


def load_target(name_or_path: str | os.PathLike | Target) -> Target:
    """Load a target by name (``targets/<name>.toml``) or from a ``.toml`` path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    p = Path(text)
    if p.suffix == ".toml" or os.sep in text:
        if not p.is_file():
            raise TargetNotFoundError(f"target file {text!r} does not exist")
    else:
        p = TARGETS_DIR / f"{text}.toml"
        if not p.is_file():
            raise TargetNotFoundError(
                f"unknown target {text!r}; known: {', '.join(target_names())}; see {TARGETS_DIR}"
            )
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"target file {str(p)!r} is not valid TOML: {e}") from e
    t = Target.from_dict(raw, path=str(p))
    if t.name != p.stem:
        raise ConfigError(f"target file {str(p)!r} declares name = {t.name!r}; "
                          f"it must match the file name {p.stem!r}")
    if t.threads == 0 and t.runtime in ("litert", "onnxruntime") and t.is_local:
        raise ConfigError(f"target {t.name!r}: threads = 0 is not allowed for a local {t.runtime} "
                          "target; name the thread count so measurements are reproducible")
    return t
