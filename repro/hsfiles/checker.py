"""Verify and consume hidden-state files: the check every request's file gets, in stress and in watch's probe.

:class:`FileChecker` runs in a thread pool, never on the event loop and never
while a concurrency slot is held. It honours vLLM's ``.lock`` protocol (the
writer holds ``flock(LOCK_EX)`` on ``<file>.lock``; readers take ``LOCK_SH``)
and removes the lock file with the data file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from repro.errors import UsageError
from repro.hsfiles import expect, hsfile

if TYPE_CHECKING:
    from repro.server.connectors import Output

# File errors where the file was read and found wrong; every other file error means it could not be verified.
FAILED_CHECK = frozenset({"bad-tokens", "bad-shape", "bad-values", "bad-scales", "bad-dtype", "bad-layout"})


@dataclass
class CheckResult:
    ok: bool
    error: str | None = None  # file-missing | lock-timeout | bad-tokens | bad-shape | bad-dtype | bad-scales
    #                          | bad-values | unreadable | consume-failed
    detail: str | None = None
    nbytes: int = 0
    shape: tuple[int, ...] | None = None
    consumed: str | None = None  # deleted | moved | kept
    seconds: float = 0.0  # time spent in this check (client-side work)
    lock_wait: float = 0.0
    dtype: str | None = None  # stored dtype of hidden_states (safetensors code: BF16, F16, F32, F8_E4M3)
    kept_at: str | None = None  # a failing file kept for inspection: where it is now


class FileChecker:
    """Verify and consume hidden-state files (thread-safe; run it in a thread pool)."""

    def __init__(self, consume: str = "delete", keep_budget: int = 1 << 30, file_wait: float = 10.0,
                 lock_timeout: float = 30.0, expected_layers: int | None = None,
                 layout: "Output | None" = None, model_dtype: str | None = None,
                 bad_dir: Path | None = None, bad_budget: int = 0) -> None:
        self.consume = consume
        self.move_dir: Path | None = None
        if consume.startswith("move:"):
            d = consume.split(":", 1)[1]
            if not d:
                raise UsageError("--consume move:DIR needs a directory")
            self.move_dir = Path(d).expanduser()
            try:
                self.move_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"--consume {consume}: cannot create {d} ({exc.strerror})") from None
        elif consume not in ("delete", "keep"):
            raise UsageError(f"unknown --consume {consume!r}: use delete, keep or move:DIR")
        self.keep_budget = keep_budget
        self.file_wait = file_wait
        self.lock_timeout = lock_timeout
        self.expected_layers = expected_layers
        self.kept_bytes = 0
        self.over_budget = 0  # files deleted because keeping them would exceed the budget
        self.bad_dir = Path(bad_dir) if bad_dir is not None else None  # failing files are moved here ...
        self.bad_budget = bad_budget  # ... up to this many bytes; the rest are deleted (and counted)
        self.bad_kept = 0
        self.bad_kept_bytes = 0
        self.bad_deleted = 0
        self._lock = threading.Lock()
        self.abandon = threading.Event()  # set when the run ends on a stall: stop waiting for files
        self.layout = layout  # what the server's connector writes (None: unknown, the file's own declarations)
        self.model_dtype = model_dtype  # safetensors code of the model's dtype when the server's --dtype says it

    def _waiting_allowed(self, deadline: float) -> bool:
        return time.monotonic() < deadline and not self.abandon.is_set()

    def _wait_exists(self, path: str) -> bool:
        deadline = time.monotonic() + self.file_wait
        while True:
            if os.path.exists(path):
                return True
            if not self._waiting_allowed(deadline):
                return False
            time.sleep(0.02)

    def _shared_lock(self, lock_path: str) -> tuple[int | None, float, bool]:
        """(fd, seconds waited, timed_out); fd None when there is no lock file."""
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None, 0.0, False
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return fd, time.monotonic() - t0, False
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            if not self._waiting_allowed(t0 + self.lock_timeout):
                os.close(fd)
                return None, time.monotonic() - t0, True
            time.sleep(0.005)

    def check(self, path: str, prompt_ids: tuple[int, ...] | list[int] | None, exact: bool = True) -> CheckResult:
        """Verify the file against the prompt (exact: token_ids == prompt; else the prompt is a prefix)."""
        t0 = time.perf_counter()
        res = self._check(path, prompt_ids, exact)
        res.seconds = time.perf_counter() - t0
        return res

    def _check(self, path: str, prompt_ids: tuple[int, ...] | list[int] | None, exact: bool) -> CheckResult:
        lock_path = path + ".lock"
        if not self._wait_exists(path):
            self._remove(lock_path)
            when = "before the run stopped" if self.abandon.is_set() else f"within {self.file_wait:g} s"
            return CheckResult(False, "file-missing", f"{path} did not appear {when}")
        try:
            fd, waited, timed_out = self._shared_lock(lock_path)
        except OSError as exc:
            return CheckResult(False, "unreadable", f"lock {lock_path}: {exc}")
        if timed_out:
            return CheckResult(False, "lock-timeout", f"writer held {lock_path} for over {self.lock_timeout:g} s",
                               lock_wait=waited)
        try:
            try:
                data = hsfile.read(path)
            except hsfile.HiddenStateFileError as exc:
                kept = self._consume_failed_file(path, lock_path)
                return CheckResult(False, exc.kind, exc.detail, lock_wait=waited, kept_at=kept)
        finally:
            if fd is not None:
                os.close(fd)
        nbytes = data.nbytes
        err = self._verify(data, prompt_ids, exact)
        hs = data.hidden_states
        shape = tuple(hs.shape) if hs is not None else None
        if err:
            kept = self._consume_failed_file(path, lock_path)
            return CheckResult(False, err[0], err[1], nbytes, shape, lock_wait=waited, dtype=data.dtype,
                               kept_at=kept)
        try:
            how = self._consume(path, lock_path, nbytes)
        except OSError as exc:
            return CheckResult(False, "consume-failed", f"{exc}", nbytes, shape, lock_wait=waited, dtype=data.dtype)
        return CheckResult(True, None, None, nbytes, shape, how, lock_wait=waited, dtype=data.dtype)

    def _verify(self, data: hsfile.HiddenStateFile, prompt: tuple[int, ...] | list[int] | None,
                exact: bool) -> tuple[str, str] | None:
        err = hsfile.check_layout(data, self.expected_layers)
        if err:
            return err
        hs = data.hidden_states
        values = hs if hs is not None and hs.dtype == np.float32 else data.values()  # float32: no copy to cast
        if not np.isfinite(values).all():
            return "bad-values", f"hidden_states ({data.dtype}) holds NaN or inf"
        err = expect.check(data, self.layout, self.model_dtype)  # the connector's own format, when it is known
        if err:
            return err
        ids = data.token_ids
        assert ids is not None  # check_layout
        if prompt is not None:
            p = np.asarray(prompt, dtype=np.int64)
            got = ids.astype(np.int64, copy=False)
            same = np.array_equal(got, p) if exact else (got.shape[0] >= p.shape[0] and np.array_equal(got[: p.shape[0]], p))
            if not same:
                return "bad-tokens", f"token_ids ({got.shape[0]} tokens) differ from the prompt ({p.shape[0]} tokens)"
        return None

    def discard(self, path: str) -> None:
        """Remove a file nobody needs (the detector's probe), once it has been written."""
        if self._wait_exists(path):
            fd, _, _ = self._shared_lock(path + ".lock")
            if fd is not None:
                os.close(fd)
        self._remove(path)
        self._remove(path + ".lock")

    def _remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _consume_failed_file(self, path: str, lock_path: str) -> str | None:
        """A file that failed its check leaves the store (it would only fill it): moved to ``bad_dir`` for
        inspection while the kept files stay within ``bad_budget`` bytes, deleted otherwise. Returns where
        it was kept (None: deleted)."""
        dest: str | None = None
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        if self.bad_dir is not None and size is not None:
            with self._lock:
                keep = self.bad_kept_bytes + size <= self.bad_budget
                if keep:
                    self.bad_kept_bytes += size
                    self.bad_kept += 1
            if keep:
                target = self.bad_dir / os.path.basename(path)
                try:
                    self.bad_dir.mkdir(parents=True, exist_ok=True)
                    shutil.move(path, target)  # os.rename on one filesystem, copy + unlink across them
                    dest = str(target)
                except OSError:
                    with self._lock:
                        self.bad_kept_bytes -= size
                        self.bad_kept -= 1
        if dest is None:
            if size is not None:
                with self._lock:
                    self.bad_deleted += 1
            self._remove(path)
        self._remove(lock_path)
        return dest

    def kept_bad(self) -> dict[str, object]:
        """Failing files kept for inspection (summary.json `files.kept_for_inspection`)."""
        with self._lock:
            return {"dir": str(self.bad_dir) if self.bad_dir is not None else None, "files": self.bad_kept,
                    "bytes": self.bad_kept_bytes, "budget_bytes": self.bad_budget,
                    "deleted_over_budget": self.bad_deleted}

    def _consume(self, path: str, lock_path: str, nbytes: int) -> str:
        if self.move_dir is not None:
            dest = self.move_dir / os.path.basename(path)
            try:
                os.replace(path, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(path, dest)
            self._remove(lock_path)
            return "moved"
        if self.consume == "keep":
            with self._lock:
                keep = self.kept_bytes + nbytes <= self.keep_budget
                if keep:
                    self.kept_bytes += nbytes
                else:
                    self.over_budget += 1
            self._remove(lock_path)
            if keep:
                return "kept"
            self._remove(path)
            return "deleted"
        self._remove(path)
        self._remove(lock_path)
        return "deleted"
