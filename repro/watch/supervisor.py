"""The watchdog loop: detect -> capture -> stop -> port free -> start -> healthy.

:class:`Supervisor` owns no policy of its own: the stall decision is the shared
:class:`~repro.monitor.detector.Detector` (a fresh one after every start, so each server
gets its startup grace and a clean baseline), the bundle is
:func:`repro.capture.run.capture` run under a time budget, restarts follow
:class:`~repro.watch.policy.RestartPolicy`. Everything with a clock, a socket or a process
is injected (``clock``, ``sleep``, ``make_detector``, ``make_observer``, ``capture_fn``,
the target), so the loop runs in unit tests on a fake clock.

A death the server's log blames on the hidden-state store (ENOSPC, a read-only or failing
filesystem) is restarted only once the store is usable again (:mod:`repro.watch.recovery`):
``storage-wait`` events while waiting, ``restart`` when the space is back, ``give-up`` when it
is not back within ``--storage-wait-max``.

Exit codes: 0 when the watch ends on its own (``--duration``), 1 when it gave up after
``--max-restarts`` restarts within an hour (or waited in vain for the store), 3 when the target could not be started,
reached, stopped or restarted (raised as TargetError).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.capture.request import Bundle, CaptureRequest
from repro.errors import EXIT_OK, EXIT_STALL, ReproError, ServerStartError, UsageError
from repro.monitor.detector import HEALTHY, STALLED, Assessment, Detector, Observation
from repro.monitor.observe import LogWarning
from repro.scenario import CaptureSettings, DetectSettings, Scenario, ServerRecord
from repro.watch.bounded import Hook, run_bounded
from repro.watch.events import EventLog
from repro.watch.observe import Observer, Prober
from repro.watch.policy import PolicySettings, RestartPolicy
from repro.watch.promstats import WatchMetrics
from repro.watch.recovery import GIVE_UP, RESTART, FsReading, RecoverySettings, StorageRecovery, measured_rates
from repro.watch.storage_duty import StorageDuty
from repro.watch.timeline import WatchTimeline
from repro.storage.causes import storage_cause
from repro.storage.alerts import StorageWatch
from repro.watch.servers import Target
from repro.options import Flag, check_ranges, declared, setting


def _storage_flag(name: str, help: str | None = None) -> Flag:
    """Scenario's declaration of a storage knob (one flag, parser and range in every command); watch words its help
    for what it can know without sending load."""
    _, flag = declared(Scenario, name)
    return flag if help is None else dataclasses.replace(flag, help=help)


@dataclass
class WatchSettings:
    detect: DetectSettings = field(default_factory=DetectSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    capture: CaptureSettings | None = field(default_factory=CaptureSettings)  # None: no capture
    capture_budget: float = setting(120.0, flag=Flag(  # seconds the restart waits for the capture at most
        "--capture-budget", "The restart waits this long for the capture at most (the capture never blocks it).",
        parse="duration", positive=True))
    on_stall: str | None = setting(None, flag=Flag(  # hook command
        "--stall-hook", "Notification hook, run with `sh -c` after each capture; REPRO_BUNDLE (tarball or dir), "
        "REPRO_BUNDLE_DIR, REPRO_STALL_CLASS, REPRO_CAPTURE_STATUS, REPRO_WATCH_URL and REPRO_EVENTS are in its "
        "environment. It never delays the restart.", metavar="CMD", aliases=("--on-stall",)))
    hook_timeout: float = setting(300.0, flag=Flag(
        "--hook-timeout", "The hook is killed after this long.", parse="duration", positive=True))
    probe: bool = setting(False, flag=Flag(
        "--probe", "Send one tiny request every --probe-interval (outside any workload), so that an idle server and "
        "a stuck one can be told apart.", parse="flag", off="--no-probe"))
    probe_interval: float = setting(30.0, flag=Flag(
        "--probe-interval", "Seconds between probes.", parse="duration", positive=True))
    duration: float | None = setting(None, flag=Flag(  # stop watching after this long (exit 0)
        "--duration", "Stop watching after this long (exit 0).", parse="duration", positive=True))
    startup_timeout: float = 600.0  # a (re)started server must answer within this
    release_timeout: float = 60.0  # port / GPU memory must be free this long after a stop
    api_key: str | None = field(default=None, repr=False)
    storage_duty: bool = False  # watch the hidden-state store given with --storage (see repro.watch.storage_duty)
    storage_path: str | None = None
    storage_grace: float = setting(300.0, flag=_storage_flag(
        "orphan_grace", "With --storage: a file older than this that is still there counts as unclaimed, an orphan "
        "(watch sends no load, so it cannot know which files a client was given)."))
    storage_horizon: float = setting(1800.0, flag=_storage_flag("storage_horizon"))
    on_storage: str | None = setting(None, flag=Flag(  # hook command for storage warnings
        "--on-storage", "Hook run on a new storage warning (REPRO_STORAGE_WARNING, _MESSAGE, _PATH in its "
        "environment).", metavar="CMD"))
    reap_older_than: float | None = setting(None, flag=Flag(
        "--reap-orphans-older-than", "With --storage: delete hidden-state files (and their .lock) older than this; "
        "never outside the store, never a symlink; each deletion is an event. Off by default.", parse="duration",
        metavar="DUR", minimum=0))
    reap_dry_run: bool = setting(False, flag=Flag(
        "--reap-dry-run", "List what --reap-orphans-older-than would delete.", parse="flag"))
    recovery: RecoverySettings = field(default_factory=RecoverySettings)  # after a storage-caused death

    def validate(self) -> None:
        """Every check of the watch settings (the command makes none of its own): one UsageError naming the flag."""
        self.detect.validate()
        self.policy.validate()
        if self.capture is not None:
            self.capture.validate()
        self.recovery.validate()
        check_ranges(self)
        for name, value in (("startup timeout", self.startup_timeout), ("release timeout", self.release_timeout)):
            if value <= 0:
                raise UsageError(f"the {name} must be positive")


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


class WatchStopped(Exception):
    """Raised (from a signal handler) to end the watch; the server repro launched is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class _ObserverLike:
    def observe(self) -> Observation: ...

    def close(self) -> None: ...


def _default_capture(req: CaptureRequest) -> Bundle:
    from repro.capture.run import capture

    return capture(req)


class Supervisor:
    def __init__(self, target: Target, settings: WatchSettings, run_dir: Path, events: EventLog,
                 metrics: WatchMetrics | None = None, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 make_detector: Callable[[DetectSettings], Detector] = Detector,
                 make_observer: Callable[[Target], _ObserverLike] | None = None,
                 capture_fn: Callable[[CaptureRequest], Bundle] | None = None,
                 say: Callable[[str], None] = lambda msg: None,
                 scenario: Scenario | None = None, server_record: ServerRecord | None = None,
                 repro_command: list[str] | None = None,
                 statvfs: Callable[[str], Any] = os.statvfs, writable: Callable[[str], bool] = _writable,
                 timeline: WatchTimeline | None = None) -> None:
        self.target, self.s, self.run_dir, self.events = target, settings, Path(run_dir), events
        self.metrics = metrics or WatchMetrics()
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.make_detector = make_detector
        self.make_observer = make_observer or self._observer
        self.capture_fn = capture_fn or _default_capture
        self.say = say
        self.scenario, self.server_record, self.repro_command = scenario, server_record, repro_command
        self.policy = RestartPolicy(settings.policy)
        self.hook = Hook(settings.on_stall, settings.hook_timeout,
                         on_done=lambda rec: self.events.write("hook-done", **rec)) if settings.on_stall else None
        self.detector: Detector | None = None
        self.observer: _ObserverLike | None = None
        self.watch_t0: float | None = None  # when the current server became ready
        self.stalls = 0
        self.last: Assessment | None = None
        self.storage = self._storage_duty() if settings.storage_duty and settings.storage_path else None
        self.statvfs, self.writable = statvfs, writable
        self._log_from = 0  # where the current server's part of the log begins
        self.storage_death: dict[str, str] | None = None  # the storage cause of the last death, until restarted
        self.timeline = timeline  # timeline.csv: what each evaluation saw (for `repro report`)
        self.servers = 0  # servers watched so far: 1, then 2 after the first restart, ...

    def _storage_duty(self) -> StorageDuty:
        s = self.s
        hook = Hook(s.on_storage, s.hook_timeout,
                    on_done=lambda rec: self.events.write("storage-hook-done", **rec)) if s.on_storage else None
        return StorageDuty(StorageWatch.open(s.storage_path or "", grace=s.storage_grace, horizon=s.storage_horizon),
                           self.events.write, hook.fire if hook else None,
                           lambda kind: self.metrics.storage_warnings.labels(kind).inc(),
                           s.reap_older_than, s.reap_dry_run)

    # -- pieces ----------------------------------------------------------------------------
    def _observer(self, target: Target) -> _ObserverLike:
        prober = None
        if self.s.probe and target.model:
            prober = Prober(target.url, target.model, self.s.probe_interval, self.s.detect.probe_timeout,
                            self.s.api_key, self.clock)
            prober.start()
        return Observer(target.url, target.log_source(), target.alive, prober, self.clock, api_key=self.s.api_key,
                        on_warning=self._log_warning)

    def _log_warning(self, w: LogWarning) -> None:
        """A warning marker in the server's log (the first of its kind per server): an event, as in stress."""
        self.events.write("log-warning", message=w.marker, line=w.line)
        self.say(f"warning: the server's log says: {w.marker}")

    def _begin_watch(self) -> None:
        if self.observer is not None:
            self.observer.close()
        self.detector = self.make_detector(self.s.detect)
        self.observer = self.make_observer(self.target)
        self._log_from = self.target.log_mark()
        self.watch_t0 = self.clock()
        self.servers += 1
        self.metrics.set_state("healthy")
        self.metrics.up.set(1)

    def _start_server(self) -> None:
        self.metrics.set_state("starting")
        self.events.write("start", **self.target.launch())
        ready = self.target.wait_ready(self.s.startup_timeout)
        self.events.write("healthy", **ready)
        self.say(f"server ready at {self.target.url} (model {ready.get('model')}, {ready.get('seconds')} s)")

    def _detection(self, a: Assessment) -> dict[str, Any]:
        now_c, now_w = self.clock(), self.wall()
        since = a.since if a.since is not None else a.t
        return {"class": a.stall_class, "state": a.state, "since_wall": round(now_w - (now_c - since), 3),
                "detected_wall": round(now_w - (now_c - a.t), 3), "detection_delay_s": round(a.t - since, 3),
                "since_s": None if self.watch_t0 is None else round(since - self.watch_t0, 3),
                "window_s": self.s.detect.window, "evidence": a.evidence, "source": "repro watch"}

    def _capture(self, a: Assessment, n: int) -> dict[str, Any]:
        if self.s.capture is None:
            self.events.write("capture", status="disabled")
            return {"status": "disabled"}
        out_dir = self.run_dir / f"bundle-{n:03d}"
        fields = self.target.capture_fields()
        req = CaptureRequest(out_dir=out_dir, settings=self.s.capture, root_pid=self.target.root_pid(),
                             storage_accounting=self.storage.accounting() if self.storage else None,
                             url=self.target.url, api_key=self.s.api_key, events=list(self.events.recent),
                             detection=self._detection(a), scenario=self.scenario, server_record=self.server_record,
                             reason="watchdog",
                             repro_command=self.repro_command, **fields)
        self.say(f"capturing into {out_dir} (at most {self.s.capture_budget:g} s) ...")
        self.metrics.set_state("stalled")
        res = run_bounded(lambda: self.capture_fn(req), self.s.capture_budget)
        info: dict[str, Any] = {"status": res.status, "seconds": res.seconds, "dir": str(out_dir)}
        if res.status == "done" and res.value is not None:
            b: Bundle = res.value
            info.update(dir=str(b.dir), tarball=str(b.tarball) if b.tarball else None, errors=b.errors[:10],
                        not_packed=b.not_packed,
                        signature=(b.verdict or {}).get("signature"), verdict=(b.verdict or {}).get("verdict"))
        elif res.status == "failed":
            info["error"] = res.error
        else:
            info["why"] = f"capture still running after the {self.s.capture_budget:g} s budget: restarting anyway"
        self.metrics.captures.labels(res.status).inc()
        self.events.write("capture", **info)
        self.say(f"capture {res.status} after {res.seconds:g} s: {info.get('tarball') or info['dir']}")
        return info

    def _fire_hook(self, a: Assessment, n: int, cap: dict[str, Any]) -> None:
        if self.hook is None:
            return
        env = {"REPRO_BUNDLE": str(cap.get("tarball") or cap.get("dir") or ""),
               "REPRO_BUNDLE_DIR": str(cap.get("dir") or ""), "REPRO_CAPTURE_STATUS": str(cap.get("status")),
               "REPRO_STALL_CLASS": str(a.stall_class), "REPRO_STALL_NUMBER": str(n),
               "REPRO_WATCH_URL": self.target.url, "REPRO_EVENTS": str(self.events.path)}
        try:
            pid = self.hook.fire(env)
        except OSError as exc:
            self.events.write("hook", status="failed", error=str(exc))
            return
        self.events.write("hook", status="started", pid=pid, command=self.s.on_stall,
                          bundle=env["REPRO_BUNDLE"])

    def _give_up(self) -> int:
        now = self.clock()
        n = self.policy.recent_restarts(now)
        left = ("stopping it" if self.target.kind == "serve"
                else "leaving it as it is for inspection")
        msg = (f"giving up: the server stalled again after {n} restart(s) within the last "
               f"{self.s.policy.period / 3600:g} h (--max-restarts {self.s.policy.max_restarts}); {left}")
        self.events.write("give-up", restarts_in_period=n, max_restarts=self.s.policy.max_restarts, message=msg)
        self.metrics.set_state("gave-up")
        self.say(msg)
        self.gave_up_message = msg
        return EXIT_STALL

    def _restart(self) -> int | None:
        """Stop, confirm release, back off, start; None when the server is healthy again."""
        self.metrics.set_state("restarting")
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        while True:
            stopped = self.target.stop()
            self.events.write("stop", **stopped)
            for name, fields in self.target.released(stopped, self.s.release_timeout):
                self.events.write(name, **fields)
            waited = 0.0
            if self.storage_death is not None:
                t0 = self.clock()
                code = self._await_storage(self.storage_death)
                if code is not None:
                    return code
                self.storage_death = None
                waited = self.clock() - t0
            delay = max(0.0, self.policy.delay(self.clock()) - waited)  # waiting for space counts as back-off
            if delay > 0:
                self.events.write("backoff", seconds=delay, **self.policy.describe(self.clock()))
                self.say(f"waiting {delay:g} s before restarting (back-off)")
                self.sleep(delay)
            self.policy.record_restart(self.clock())
            self.metrics.restarts.inc()
            try:
                self._start_server()
            except ServerStartError as exc:
                self.events.write("start-failed", error=str(exc).splitlines()[0])
                self.say(f"restart failed: {str(exc).splitlines()[0]}")
                if self.policy.give_up(self.clock()):
                    self.target.shutdown()
                    return self._give_up()
                continue
            self._begin_watch()
            return None

    # -- a death the log blames on the hidden-state store ---------------------------------------
    def _name_storage_cause(self, a: Assessment) -> None:
        """Read the log of the server that just stalled or died; a storage cause goes into the evidence."""
        cause = storage_cause(self.target.log_tail(self._log_from))
        self.storage_death = cause
        if cause is not None:
            a.evidence["storage_cause"] = cause
            a.evidence.setdefault("reasons", []).append(f"storage: {cause['kind']} ({cause['line'][:200]})")

    def _store_path(self) -> str | None:
        return self.s.storage_path or self.target.capture_fields().get("storage_path")

    def _read_store(self, path: str) -> tuple[FsReading | None, str | None]:
        try:
            return FsReading.of(self.statvfs(path), self.writable(path)), None
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc.strerror or exc}"

    def _await_storage(self, cause: dict[str, str]) -> int | None:
        """After a storage-caused death: poll the store until it is usable (None) or give up (exit code)."""
        path = self._store_path()
        if not path:
            msg = (f"the server died of {cause['kind']} in its hidden-state store, but watch does not know where the "
                   f"store is (--storage PATH): it cannot wait for space; restarting under the usual back-off")
            self.events.write("storage-wait", status="unknown-store", cause=cause["kind"], message=msg)
            self.say(msg)
            return None
        bps, ips = (measured_rates(self.storage.storage.census.history, self.s.recovery.runway)
                    if self.storage is not None else (None, None))
        rec = StorageRecovery(self.s.recovery, cause, path, self.clock(), bps, ips,
                              reaping=self.storage is not None and self.s.reap_older_than is not None)
        self.metrics.set_state("storage-wait")
        while True:
            if self.storage is not None:  # warnings, and reaping when --reap-orphans-older-than is on: a scan
                self.storage.tick(force=True)  # every poll costs little while the server is down
            reading, error = self._read_store(path)
            d = rec.decide(self.clock(), reading, error)
            if d.action == RESTART:
                self.events.write("restart", reason="storage recovered", message=d.message, **d.fields)
                self.say(d.message)
                return None
            if d.action == GIVE_UP:
                self.events.write("give-up", reason="storage", message=d.message, **d.fields)
                self.metrics.set_state("gave-up")
                self.say(d.message)
                self.gave_up_message = d.message
                return EXIT_STALL
            if d.announce:
                self.events.write("storage-wait", status="waiting", message=d.message, **d.fields)
                self.say(d.message)
            self.sleep(self.s.recovery.poll)

    def _on_stall(self, a: Assessment) -> int | None:
        self.stalls += 1
        n = self.stalls
        self._name_storage_cause(a)
        reasons = a.evidence.get("reasons", [])
        self.events.write("detect", n=n, **{"class": a.stall_class}, detection=self._detection(a), reasons=reasons)
        self.metrics.stalls.labels(a.stall_class or "unknown").inc()
        self.metrics.last_stall.set(self.wall())
        self.say(f"STALL {n}: {a.stall_class}: {'; '.join(reasons)}")
        cap = self._capture(a, n)
        self._fire_hook(a, n, cap)
        if self.policy.give_up(self.clock()):
            return self._give_up()
        return self._restart()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, check: bool = True) -> int:
        """Watch until --duration, a signal, or giving up; `check=False` when the caller checked the target."""
        self.gave_up_message: str | None = None
        t = self.target
        self.events.write("watch-start", mode=t.kind, url=t.url, window=self.s.detect.window,
                          min_bad_evaluations=self.s.detect.min_bad_evaluations,
                          poll_interval=self.s.detect.poll_interval, max_restarts=self.s.policy.max_restarts,
                          probe=self.s.probe, capture=self.s.capture is not None)
        code: int | None = None
        reason = "error"
        try:
            if check:
                t.check()
            if t.kind == "serve":
                self._start_server()
            else:
                self.events.write("attached", model=t.model, pid=t.root_pid())
            self._begin_watch()
            t_end = None if self.s.duration is None else self.clock() + self.s.duration
            next_poll = self.clock()
            while True:
                if t_end is not None and self.clock() >= t_end:
                    reason, code = "duration", EXIT_OK
                    return code
                assert self.observer is not None and self.detector is not None
                ob = self.observer.observe()
                a = self.detector.observe(ob)
                self.last = a
                self.metrics.up.set(1 if ob.metrics is not None else 0)
                self.metrics.heartbeat()
                self.policy.note_health(ob.t, a.state == HEALTHY)
                if self.timeline is not None:
                    self.timeline.record(ob, a, self.servers)
                if a.changed:
                    self.events.write("detector", state=a.state, **{"class": a.stall_class},
                                      reasons=a.evidence.get("reasons", []))
                    self.metrics.set_state(a.state)
                if self.storage is not None:
                    self.storage.tick()
                if a.state == STALLED:
                    code = self._on_stall(a)
                    if code is not None:
                        reason = "gave-up"
                        return code
                    next_poll = self.clock()
                    continue
                next_poll += self.s.detect.poll_interval
                self.sleep(max(0.0, next_poll - self.clock()))
        except ReproError as exc:
            code = exc.exit_code
            self.events.write("error", message=exc.message)
            raise
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except WatchStopped as exc:
            reason, code = f"stopped by signal {exc.signum}", EXIT_OK
            raise
        finally:
            if self.observer is not None:
                self.observer.close()
            t.shutdown()
            self.events.write("watch-stop", reason=reason, exit_code=code, stalls=self.stalls,
                              restarts=len(self.policy.restarts))
