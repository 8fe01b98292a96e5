"""Quiet output for the command line and the demo (never used by library code, which does not
configure logging or warnings).

The converters and runtimes edgeprune drives print hundreds of lines a run that a user cannot
act on: torch's pytree ``FutureWarning``s, torchao's failed CUDA-kernel loads, absl/TFLite C++
log lines, coremltools' version warnings, litert-torch's "converted in training mode" (it
converts an exported graph, whose module flag says training; the graph itself is eval).
:func:`quiet_output` keeps edgeprune's own messages and every third-party error, and sends
the rest away:

- Python warnings: ignored unless raised from edgeprune;
- logging: one handler on the root logger that shows edgeprune's records and any record of
  level ERROR or above; the known noisy loggers are set to ERROR;
- C++ output written straight to file descriptor 2 (and everything worker processes write
  there): into a log file, deleted when the block succeeds and kept (its path printed) when
  it ends in an unexpected exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NOISY_LOGGERS = ("torch", "torchao", "coremltools", "absl", "jax", "litert_torch",
                 "ai_edge_litert", "ai_edge_quantizer", "onnxscript", "onnx_ir", "tensorflow")
# read when the library is first imported: absl/TF C++ INFO and WARNING lines of the converter;
# torch's own logging setup (it resets the "torch" logger's level when torch is imported)
_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TORCH_LOGS": "-all"}


def _ours(record: logging.LogRecord) -> bool:
    return (record.name == "edgeprune" or record.name.startswith("edgeprune.")
            or record.levelno >= logging.ERROR)


@contextlib.contextmanager
def quiet_output(verbose: bool = False) -> Iterator[Path | None]:
    """Silence third-party noise for the block (see the module docstring); with ``verbose``,
    change nothing. Yields the path of the file that receives C++ output (None if verbose)."""
    if verbose:
        yield None
        return
    old_env = {k: os.environ.get(k) for k in _ENV}
    for k, v in _ENV.items():
        os.environ.setdefault(k, v)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers),
             {n: logging.getLogger(n).level for n in NOISY_LOGGERS})
    ok = False
    try:
        with warnings.catch_warnings(), _fd2_to_file() as log:
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"edgeprune(\.|$)")
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("edgeprune: %(levelname)s: %(message)s"))
            handler.addFilter(_ours)
            root.handlers = [handler]
            root.setLevel(logging.WARNING)
            for n in NOISY_LOGGERS:
                logging.getLogger(n).setLevel(logging.ERROR)
            try:
                yield log.path
                ok = True
            except BaseException as e:
                # a deliberate error (EdgepruneError, a usage exit) needs no third-party log
                from edgeprune.errors import EdgepruneError

                ok = isinstance(e, (EdgepruneError, SystemExit, KeyboardInterrupt))
                raise
            finally:
                log.keep = not ok
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        for n, level in saved[2].items():
            logging.getLogger(n).setLevel(level)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class _Log:
    path: Path
    keep: bool = False


@contextlib.contextmanager
def _fd2_to_file() -> Iterator[_Log]:
    """Point file descriptor 2 at a log file for the block. ``sys.stderr``, when it writes to
    descriptor 2, is moved to a copy of the original descriptor so Python's own output
    (errors, progress bars) still reaches the terminal."""
    fd, name = tempfile.mkstemp(prefix="edgeprune-", suffix=".log")
    log = _Log(Path(name))
    saved_fd = os.dup(2)
    try:
        uses_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a capture object (tests)
        uses_fd2 = False
    old_stderr = sys.stderr
    if uses_fd2:
        sys.stderr.flush()
        sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=old_stderr.encoding,
                               errors="backslashreplace")
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield log
    finally:
        if uses_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = old_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if log.keep:
            print(f"(third-party output of this run: {log.path})", file=sys.stderr)
        else:
            log.path.unlink(missing_ok=True)
