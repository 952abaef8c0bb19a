"""Decoding in a child process: a file that hangs or crashes its decoder fails alone, with a reason.

libsndfile and ffmpeg are C code. A crafted file can make them loop forever or kill the process they run in,
and no Python-level timeout can interrupt a C loop. So the Ray task that decodes a batch does not decode
itself: it hands one file at a time to a long-lived child process (``python -m raygenre.data.decoder``) and waits
at most ``timeout_s`` for the answer. A child that does not answer in time is killed with its whole process
group (ffmpeg included); a child that dies is noticed by the closed pipe. Either way that file gets an
``AudioError`` that says so, a fresh child starts, and the rest of the batch goes on.

What crosses the pipe is small: a function reference and its arguments in, decoded windows out (ten 3 s
windows at 22,050 Hz are 2.6 MB). The child imports only numpy/soundfile/soxr (about 0.3 s, once per worker
process), never torch: the MFCCs are computed by the caller.

``RAYGENRE_TEST_DECODER_FAULTS`` (tests only) makes the child misbehave on purpose for files whose name
contains a marker: ``hang=MARK`` sleeps forever, ``crash=MARK`` kills the child with SIGSEGV, several joined
by commas. It is read in the child only, so it cannot change what a normal run does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from raygenre.data.audio import AudioError

FAULTS_ENV = "RAYGENRE_TEST_DECODER_FAULTS"
_HEADER = 8  # bytes: little-endian length of the pickled message that follows
_IN_SHARED = 1 << 63  # header flag: the answer is in the shared memory file, not in the pipe
SHARED_MIN = 1 << 16  # bytes: smaller answers go through the pipe


class Decoder:
    """Runs decode functions in a child process, one call at a time, each under a deadline.

    ``decoder(fn, *args, deadline=t)`` returns ``fn(*args)`` as run in the child. ``fn`` must be importable
    (a module-level function). Raises ``AudioError`` when ``fn`` does, when the child passes ``deadline``
    (``time.monotonic()`` seconds), or when it dies. ``timeout_s`` is what the error message quotes.
    """

    def __init__(self, timeout_s: float, setting: str = "decode_timeout_s") -> None:
        self.timeout_s, self.setting = timeout_s, setting
        self.proc: subprocess.Popen[bytes] | None = None
        self.shared: int | None = None  # memfd for large answers (Linux)

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # the child must import this very raygenre, wherever the worker found it (a Ray working_dir, a venv)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # Large answers (decoded windows: MBs) go through a memory file both processes hold, not the pipe: through
        # the pipe a 2.6 MB answer took 10 ms, a third of a file's decode (bench/decoder.py).
        self.shared = os.memfd_create("raygenre-decoder") if hasattr(os, "memfd_create") else None
        extra = [] if self.shared is None else [str(self.shared)]
        return subprocess.Popen([sys.executable, "-m", "raygenre.data.decoder", *extra], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, start_new_session=True,
                                pass_fds=() if self.shared is None else (self.shared,))

    def __call__(self, fn: Callable[..., Any], *args: Any, deadline: float) -> Any:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, (fn, args))
            reply = _receive(proc.stdout, deadline, self.shared)
        except TimeoutError:
            self.kill()
            raise AudioError(f"decoding took longer than {self.timeout_s:g} s ({self.setting}): the file hangs "
                             f"the decoder, or the limit is too low for it") from None
        except (EOFError, BrokenPipeError, OSError):
            code = self.kill()
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
            raise AudioError(f"the decoder crashed on this file ({how}): the file is damaged") from None
        kind, value, duration = reply
        if kind == "ok":
            return value
        err = AudioError(value if kind == "error" else f"could not decode: {value}")
        if duration is not None:
            err.duration_s = duration  # type: ignore[attr-defined]
        raise err

    def kill(self) -> int | None:
        """End the child and its process group (an ffmpeg it started); return its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[union-attr]
        if self.shared is not None:
            os.close(self.shared)
            self.shared = None
        return proc.returncode


@functools.lru_cache(maxsize=2)
def decoder(timeout_s: float, setting: str = "decode_timeout_s") -> Decoder:
    """The worker process's decoder (one child per Ray worker process, reused by its tasks)."""
    return Decoder(timeout_s, setting)


def run(fn: Callable[..., Any], *args: Any, timeout_s: float, deadline: float | None = None,
        setting: str = "decode_timeout_s") -> Any:
    """``fn(*args)`` in the worker's decoder child under ``timeout_s`` (or ``deadline``); in-process when
    ``timeout_s <= 0`` (no isolation, no limit: for measuring what the child costs)."""
    if timeout_s <= 0:
        return fn(*args)
    return decoder(timeout_s, setting)(fn, *args, deadline=deadline or time.monotonic() + timeout_s)


# ------------------------------------------------------------------------------------------ the protocol
def _send(stream: BinaryIO, obj: Any, shared: int | None = None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if shared is not None and len(data) >= SHARED_MIN:
        done = 0
        while done < len(data):
            done += os.pwrite(shared, memoryview(data)[done:], done)
        stream.write((len(data) | _IN_SHARED).to_bytes(_HEADER, "little"))
    else:
        stream.write(len(data).to_bytes(_HEADER, "little") + data)
    stream.flush()


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(stream: BinaryIO, deadline: float | None, shared: int | None = None) -> Any:
    fd = stream.fileno()
    size = int.from_bytes(_read_exactly(fd, _HEADER, deadline), "little")
    if size & _IN_SHARED and shared is not None:
        size &= ~_IN_SHARED
        data = os.pread(shared, size, 0)
        if len(data) != size:
            raise EOFError
        return pickle.loads(data)
    return pickle.loads(_read_exactly(fd, size, deadline))


# ------------------------------------------------------------------------------------------- the child
def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the worker that started it dies (a hung child would outlive it)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(0)


def _faults() -> dict[str, str]:
    spec = os.environ.get(FAULTS_ENV, "")
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


def _inject(faults: dict[str, str], args: tuple[Any, ...]) -> None:
    name = os.path.basename(str(args[0])) if args else ""
    if faults.get("hang") and faults["hang"] in name:
        time.sleep(1e9)
    if faults.get("crash") and faults["crash"] in name:
        os.kill(os.getpid(), signal.SIGSEGV)


def serve() -> None:
    """The child's loop: read a call, run it, answer; exit when the parent closes the pipe."""
    _die_with_parent()
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the answers
    calls = sys.stdin.buffer
    shared = int(sys.argv[1]) if len(sys.argv) > 1 else None
    faults = _faults()
    while True:
        try:
            fn, args = pickle.loads(_read_exactly(calls.fileno(),
                                                  int.from_bytes(_read_exactly(calls.fileno(), _HEADER, None),
                                                                 "little"), None))
        except EOFError:
            return
        try:
            _inject(faults, args)
            reply: tuple[str, Any, Any] = ("ok", fn(*args), None)
        except AudioError as exc:
            reply = ("error", exc.reason, getattr(exc, "duration_s", None))
        except Exception as exc:  # noqa: BLE001 - reported to the caller as this file's error
            reply = ("exception", f"{type(exc).__name__}: {exc}", None)
        _send(answers, reply, shared)


if __name__ == "__main__":
    serve()
