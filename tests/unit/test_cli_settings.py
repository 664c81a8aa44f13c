"""Every command's flags land in the right setting: the CLI is run in-process with its core entry point
replaced by a recorder, and the exact settings object it built is compared with the one the flags mean.

One test per command (and one per mode of `watch`), each with non-default values for its flags; a test
with no flags pins each command's defaults. Unified flag names and the old spellings they replace are
checked here too: both must build the same settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from repro.bisect.search import Settings
from repro.bisect.space import Change, SearchSpace
from repro.capture.request import CaptureRequest
from repro.scenario import CaptureSettings, DetectSettings, LoadSettings, Scenario, ServerSettings
from repro.watch.policy import PolicySettings
from repro.watch.recovery import MinFree, RecoverySettings
from repro.watch.supervisor import WatchSettings
from tests.helpers_cli import Recorded, call_recorded, one_line_error, recorder, repro_inprocess

SERVER_FLAGS = ["--model", "/models/m", "--host", "0.0.0.0", "--port", "9123", "--served-model-name", "mm",
                "--no-extract", "--storage", "STORE", "--layers", "2,4", "--connector", "cpu",
                "--async-scheduling", "--no-chunked-prefill", "--prefix-caching", "--max-num-seqs", "7",
                "--max-model-len", "512", "--dtype", "bfloat16", "--inject", "stall-after=30",
                "--inject-control", "/tmp/ctl", "--vllm-cmd", "python -m vllm.entrypoints.cli.main serve",
                "--startup-timeout", "90"]


def server_expected(store: str, extra: list[str]) -> ServerSettings:
    return ServerSettings(model="/models/m", host="0.0.0.0", port=9123, served_model_name="mm", extract=False,
                          storage=store, layers=[2, 4], connector="cpu", async_scheduling=True,
                          chunked_prefill=False, prefix_caching=True, max_num_seqs=7, max_model_len=512,
                          dtype="bfloat16", inject="stall-after=30", inject_control="/tmp/ctl",
                          extra_args=extra, vllm_cmd=["python", "-m", "vllm.entrypoints.cli.main", "serve"],
                          startup_timeout=90.0)


def with_store(flags: list[str], store: str) -> list[str]:
    return [store if f == "STORE" else f for f in flags]


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("repro.commands.stress._report_line", lambda *a: None)


# --- serve ---------------------------------------------------------------------------------------------------


def test_serve_flags_land_in_server_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every `repro serve` option fills its ServerSettings field; arguments after -- become extra_args."""
    recorder(monkeypatch, "repro.commands.serve.VllmServer")
    store = str(tmp_path / "hs")
    rec = call_recorded("serve", *with_store(SERVER_FLAGS, store), "-o", str(tmp_path / "run"),
                        "--", "--enforce-eager", "--seed", "3")
    settings, run_dir = rec.args_
    assert settings == server_expected(store, ["--enforce-eager", "--seed", "3"])
    assert run_dir == tmp_path / "run"


def test_serve_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No flags: the ServerSettings defaults (tiny model, 127.0.0.1:8000, extraction on, connector auto)."""
    recorder(monkeypatch, "repro.commands.serve.VllmServer")
    settings, _ = call_recorded("serve", "-o", str(tmp_path / "run")).args_
    assert settings == ServerSettings()


# --- stress / trial ------------------------------------------------------------------------------------------


def stress_flags(tmp_path: Path) -> list[str]:
    (tmp_path / "store").mkdir(exist_ok=True)
    return ["--url", "http://10.0.0.1:8001/", "--api-key", "sekrit", "--model-name", "served",
            "--log-file", "/var/log/vllm.log", "--server-command", "vllm serve m --port 8001",
            "--storage-path", str(tmp_path / "store"), "--storage-horizon", "10m", "--orphan-grace", "45s",
            "--workload", "chat", "--concurrency", "8", "--rate", "2.5", "--duration", "1h30m",
            "--requests", "100", "--request-timeout", "30s", "--retries", "1", "--seed", "7",
            "--prompt-len", "16-64", "--vocab-size", "300", "--check-threads", "5", "--max-tokens", "4",
            "--consume", "keep", "--keep-budget", "2MB", "--keep-bad", "0",
            "--poll-interval", "0.5", "--window", "2m", "--min-bad", "4", "--slow-floor", "1.5",
            "--startup-grace", "5s", "--on-stall", "exit", "--samples", "5", "--sample-interval", "0.5",
            "--bundle-budget", "10MB", "--env-allow", "MYAPP_*", "--env-allow", "OTHER",
            "-o", str(tmp_path / "run")]


def stress_expected(tmp_path: Path) -> Scenario:
    return Scenario(
        server=ServerSettings(),
        load=LoadSettings(workload="chat", concurrency=8, rate=2.5, duration=5400.0, requests=100,
                          request_timeout=30.0, retries=1, seed=7, prompt_len=(16, 64), max_tokens=4,
                          consume="keep", keep_budget=2_000_000, keep_bad_budget=0, model_name="served",
                          vocab_size=300, check_threads=5),
        detect=DetectSettings(poll_interval=0.5, window=120.0, min_bad_evaluations=4, slow_floor=1.5,
                              startup_grace=5.0),
        capture=CaptureSettings(samples=5, interval=0.5, size_budget=10_000_000, env_allow=("MYAPP_*", "OTHER")),
        url="http://10.0.0.1:8001", log_file="/var/log/vllm.log", storage_path=str(tmp_path / "store"),
        storage_horizon=600.0, orphan_grace=45.0, on_stall="exit", out_dir=str(tmp_path / "run"),
        api_key="sekrit", server_cmdline=["vllm", "serve", "m", "--port", "8001"])


def check_stress_scenario(scn: Scenario, expected: Scenario) -> None:
    assert scn.invocation is not None and scn.invocation[0] == "repro"
    assert "sekrit" not in " ".join(scn.invocation)  # the reproducer never carries the key
    assert dataclasses.replace(scn, invocation=None) == expected


@pytest.mark.parametrize("command", ["stress", "trial"])
def test_stress_and_trial_flags_land_in_the_scenario(command: str, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """Every load, detector, capture and attach flag of stress (and trial, the same run) fills its field."""
    recorder(monkeypatch, "repro.load.runner.run_stress")
    rec = call_recorded(command, *stress_flags(tmp_path))
    scn, run_dir = rec.args_
    check_stress_scenario(scn, stress_expected(tmp_path))
    assert run_dir == tmp_path / "run"


def test_stress_server_flags_land_in_server_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """stress launches with the `repro serve` options: they fill scenario.server exactly as serve's do."""
    recorder(monkeypatch, "repro.load.runner.run_stress")
    store = str(tmp_path / "hs")
    scn, _ = call_recorded("stress", *with_store(SERVER_FLAGS, store), "-o", str(tmp_path / "run"),
                           "--", "--enforce-eager").args_
    assert scn.server == server_expected(store, ["--enforce-eager"])
    assert scn.url is None


def test_stress_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No flags: the settings classes' defaults, closed loop at 32, until interrupted."""
    recorder(monkeypatch, "repro.load.runner.run_stress")
    scn, _ = call_recorded("stress", "-o", str(tmp_path / "run")).args_
    assert dataclasses.replace(scn, invocation=None) == Scenario(out_dir=str(tmp_path / "run"))
    assert scn.load.keep_budget == 1_000_000_000  # "1GB", the default --help shows


@pytest.mark.parametrize("flags, seconds", [(["--hours", "0.5"], 1800.0), (["--minutes", "3"], 180.0),
                                            (["--duration", "90s"], 90.0)])
def test_stress_duration_spellings_all_fill_load_duration(flags: list[str], seconds: float,
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--hours, --minutes and --duration are one setting, in seconds."""
    recorder(monkeypatch, "repro.load.runner.run_stress")
    scn, _ = call_recorded("stress", *flags, "-o", str(tmp_path / "run")).args_
    assert scn.load.duration == seconds


def test_stress_api_key_comes_from_repro_api_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The bearer token may come from $REPRO_API_KEY."""
    recorder(monkeypatch, "repro.load.runner.run_stress")
    monkeypatch.setenv("REPRO_API_KEY", "from-env")
    scn, _ = call_recorded("stress", "--url", "http://127.0.0.1:9", "-o", str(tmp_path / "run")).args_
    assert scn.api_key == "from-env"


def test_stress_ray_flags_reach_the_fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--executor ray with --replicas/--keep-going/--ray-*: the cluster is asked for what the flags say."""
    recorder(monkeypatch, "repro.executors.cluster.connect")
    rec = call_recorded("stress", "--executor", "ray", "--ray-address", "head:6379", "--ray-cpus", "2",
                        "--ray-gpus", "1", "--replicas", "3", "--keep-going", "-o", str(tmp_path / "run"))
    address, ask, replicas = rec.args_
    assert (address, ask.cpus, ask.gpus, replicas) == ("head:6379", 2.0, 1.0, 3)


# --- capture -------------------------------------------------------------------------------------------------


def test_capture_flags_land_in_the_capture_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every `repro capture` option fills its CaptureRequest / CaptureSettings field."""
    recorder(monkeypatch, "repro.capture.run.capture")
    monkeypatch.setattr("repro.commands.capture._resolve_pid", lambda pid: pid + 1)  # the root of that pid
    rec = call_recorded("capture", "--pid", "4242", "--url", "http://127.0.0.1:8000", "--samples", "4",
                        "--interval", "0.5", "-o", str(tmp_path / "b"), "--log-file", "/var/log/v.log",
                        "--server-command", "vllm serve m", "--storage", "/dev/shm/hs", "--api-key", "sekrit",
                        "--py-spy", "/opt/py-spy", "--no-native", "--no-collect-env", "--redact-hosts",
                        "--size-budget", "5MB", "--env-allow", "MYAPP_*")
    (req,) = rec.args_
    assert req.repro_command is not None and "sekrit" not in " ".join(req.repro_command)
    assert dataclasses.replace(req, repro_command=None) == CaptureRequest(
        out_dir=tmp_path / "b",
        settings=CaptureSettings(samples=4, interval=0.5, native=False, redact_hosts=True, size_budget=5_000_000,
                                 pyspy="/opt/py-spy", collect_env=False, env_allow=("MYAPP_*",)),
        root_pid=4243, url="http://127.0.0.1:8000", api_key="sekrit", log_path=Path("/var/log/v.log"),
        storage_path="/dev/shm/hs", server_command=["vllm", "serve", "m"], reason="manual")


def test_capture_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only a target: the CaptureSettings defaults (3 samples 2 s apart, native, collect-env, 20 MB)."""
    recorder(monkeypatch, "repro.capture.run.capture")
    monkeypatch.setattr("repro.commands.capture._resolve_pid", lambda pid: pid)
    monkeypatch.delenv("REPRO_API_KEY", raising=False)
    (req,) = call_recorded("capture", "--pid", "4242", "-o", str(tmp_path / "b")).args_
    assert req.settings == CaptureSettings()
    assert (req.root_pid, req.url, req.api_key, req.docker, req.storage_path) == (4242, None, None, None, None)


# --- watch ---------------------------------------------------------------------------------------------------


@pytest.fixture
def watch_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    from repro.watch import servers as targets

    for cls in (targets.ServeTarget, targets.DockerTarget, targets.ExternalTarget):
        monkeypatch.setattr(cls, "check", lambda self: None)
    recorder(monkeypatch, "repro.commands.watch.Supervisor")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv("REPRO_API_KEY", raising=False)


WATCH_FLAGS = ["--window", "2m", "--min-bad", "4", "--poll-interval", "2s", "--startup-grace", "30s", "--probe",
               "--probe-interval", "15s", "--probe-timeout", "5s", "--capture-budget", "60s",
               "--capture-samples", "6", "--capture-interval", "1s", "--no-collect-env", "--env-allow", "MYAPP_*",
               "--max-restarts", "2", "--backoff", "20s", "--backoff-max", "2m", "--reset-after", "20m",
               "--on-stall", "echo stalled", "--hook-timeout", "1m", "--duration", "1h",
               "--restart-min-free", "2GB", "--restart-runway", "5m", "--storage-wait-max", "3m"]


def watch_expected(**kw: object) -> WatchSettings:
    ws = WatchSettings(
        detect=DetectSettings(poll_interval=2.0, window=120.0, min_bad_evaluations=4, startup_grace=30.0,
                              probe_timeout=5.0),
        policy=PolicySettings(backoff_initial=20.0, backoff_max=120.0, reset_after=1200.0, max_restarts=2),
        capture=CaptureSettings(samples=6, interval=1.0, collect_env=False, env_allow=("MYAPP_*",)),
        capture_budget=60.0, on_stall="echo stalled", hook_timeout=60.0, probe=True, probe_interval=15.0,
        duration=3600.0, recovery=RecoverySettings(min_free=MinFree(bytes=2_000_000_000), runway=300.0,
                                                   max_wait=180.0))
    return dataclasses.replace(ws, **kw)  # type: ignore[arg-type]


def test_watch_serve_flags_land_in_watch_and_server_settings(watch_recorder: None, tmp_path: Path) -> None:
    """`watch --serve`: the detector, policy, capture, hook and recovery flags fill WatchSettings; the
    `repro serve` options fill the launched server's settings."""
    store = str(tmp_path / "hs")
    rec = call_recorded("watch", "--serve", *with_store(SERVER_FLAGS, store), *WATCH_FLAGS,
                        "--storage-grace", "2m", "--storage-horizon", "10m", "--on-storage", "echo full",
                        "--reap-orphans-older-than", "1h", "--reap-dry-run", "-o", str(tmp_path / "run"),
                        "--", "--enforce-eager")
    target, ws = rec.args_[:2]
    assert target.kind == "serve" and target.settings == server_expected(store, ["--enforce-eager"])
    assert ws == watch_expected(startup_timeout=90.0, storage_duty=True, storage_path=store, storage_grace=120.0,
                                storage_horizon=600.0, on_storage="echo full", reap_older_than=3600.0,
                                reap_dry_run=True)
    scn = rec.kwargs["scenario"]
    assert scn.server.port == 9123 and scn.on_stall == "restart" and scn.url is None


def test_watch_url_flags_land_in_the_external_target(watch_recorder: None, tmp_path: Path) -> None:
    """`watch --url --restart-cmd --pid --log-file --api-key`: the target is built from them."""
    rec = call_recorded("watch", "--url", "http://10.0.0.2:8000/", "--restart-cmd", "systemctl restart vllm",
                        "--restart-timeout", "2m", "--log-file", "/var/log/v.log", "--api-key", "sekrit",
                        *WATCH_FLAGS, "-o", str(tmp_path / "run"))
    target, ws = rec.args_[:2]
    assert (target.kind, target.url, target.restart_cmd, target.restart_timeout, target.log_file,
            target.api_key, target.storage_path) == ("url", "http://10.0.0.2:8000", "systemctl restart vllm",
                                                     120.0, "/var/log/v.log", "sekrit", None)
    assert ws == watch_expected(api_key="sekrit")
    assert ws.api_key == "sekrit"
    assert "sekrit" not in " ".join(rec.kwargs["repro_command"])


def test_watch_docker_flags_land_in_the_docker_target(watch_recorder: None, tmp_path: Path) -> None:
    """`watch --docker NAME` without --url: this host at --port; --storage is the store to watch."""
    (tmp_path / "store").mkdir()
    rec = call_recorded("watch", "--docker", "vllm-1", "--port", "8123", "--storage", str(tmp_path / "store"),
                        "-o", str(tmp_path / "run"))
    target, ws = rec.args_[:2]
    assert (target.kind, target.name, target.url, target.storage_path) == (
        "docker", "vllm-1", "http://127.0.0.1:8123", str(tmp_path / "store"))
    assert ws == WatchSettings(storage_duty=True, storage_path=str(tmp_path / "store"))


def test_watch_defaults(watch_recorder: None, tmp_path: Path) -> None:
    """`watch --serve` alone: the WatchSettings defaults (capture on, no probe, no hook, no storage duty)."""
    target, ws = call_recorded("watch", "--serve", "-o", str(tmp_path / "run")).args_[:2]
    assert target.settings == ServerSettings()
    assert ws == WatchSettings()


@pytest.mark.parametrize("env", ["REPRO_API_KEY", "VLLM_API_KEY"])
def test_watch_api_key_comes_from_repro_api_key_or_vllm_api_key(env: str, watch_recorder: None,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """The bearer token of the watched server: $REPRO_API_KEY like every command, $VLLM_API_KEY still read."""
    monkeypatch.setenv(env, "from-env")
    rec = call_recorded("watch", "--url", "http://127.0.0.1:9", "--restart-cmd", "true", "-o", str(tmp_path / "r"))
    assert rec.args_[1].api_key == "from-env" and rec.args_[0].api_key == "from-env"


def test_watch_no_capture_means_no_capture_settings(watch_recorder: None, tmp_path: Path) -> None:
    """--no-capture: WatchSettings.capture is None (no bundle before a restart)."""
    ws = call_recorded("watch", "--serve", "--no-capture", "-o", str(tmp_path / "run")).args_[1]
    assert ws.capture is None


# --- bisect --------------------------------------------------------------------------------------------------


def test_bisect_flags_land_in_space_settings_and_base_scenario(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """Every `repro bisect` option fills the SearchSpace, the search Settings, or the base scenario."""
    recorder(monkeypatch, "repro.bisect.driver.start_or_resume")
    rec = call_recorded("bisect", "--concurrency", "2-16", "--step", "2", "--change",
                        "max-num-seqs=8", "--change", "timeout=120", "--plain-storage", "/tmp/plain",
                        "--max-trial", "2h", "--budget", "48", "--alpha", "0.1", "--baseline-hangs", "2",
                        "--hazard-model", "exponential", "--rate-ratio", "0.25", "--confirm-hangs", "2",
                        "--probe-minimum", "0.1", "--min-trial", "2m", "--parallel", "2",
                        "--workload-prompt-len", "64-128", "--max-tokens", "8", "--seed", "5", "--window", "60",
                        "--poll-interval", "0.5", "--min-bad", "2", "--startup-grace", "30", "--on-stall", "exit",
                        "--heartbeat", "3", "--fresh-server", "--model", "/models/m", "--port", "9001",
                        "-o", str(tmp_path / "run"), "--", "--enforce-eager")
    run_dir, spec, resume = rec.args_
    assert run_dir == tmp_path / "run" and resume is False and spec.mode == "real"
    assert spec.space == SearchSpace(2, 16, (Change.parse("max-num-seqs=8"), Change.parse("timeout=120")),
                                     plain_storage="/tmp/plain", max_trial=7200.0, budget=48 * 3600.0, step=2)
    assert spec.settings == Settings(alpha=0.1, baseline_hangs=2, hazard_model="exponential", rate_ratio=0.25,
                                     confirm_hangs=2, probe_minimum=0.1, max_trial=7200.0, min_trial=120.0,
                                     budget=48 * 3600.0, split_runs=True)
    extra = dict(spec.extra)
    base = spec.base
    assert extra == {"simulate": None, "parallel": 2, "heartbeat": 3.0, "reuse_server": False}
    assert base == Scenario(server=ServerSettings(model="/models/m", port=9001, extra_args=["--enforce-eager"]),
                            load=LoadSettings(prompt_len=(64, 128), max_tokens=8, seed=5),
                            detect=DetectSettings(poll_interval=0.5, window=60.0, min_bad_evaluations=2,
                                                  startup_grace=30.0),
                            on_stall="exit")


def test_bisect_prior_fills_prior_or_prior_uptimes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--prior K/DUR is (hangs, seconds); --prior UP,UP is the uptimes (and their count and sum)."""
    recorder(monkeypatch, "repro.bisect.driver.start_or_resume")
    spec = call_recorded("bisect", "-c", "1-8", "--prior", "3/15h", "-o", str(tmp_path / "a")).args_[1]
    assert (spec.settings.prior, spec.settings.prior_uptimes) == ((3, 54000.0), None)
    spec = call_recorded("bisect", "-c", "1-8", "--prior", "6h,5h", "-o", str(tmp_path / "b")).args_[1]
    assert (spec.settings.prior, spec.settings.prior_uptimes) == ((2, 39600.0), (21600.0, 18000.0))


def test_bisect_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only a range: the Settings defaults and a base scenario with bisect's own load defaults."""
    recorder(monkeypatch, "repro.bisect.driver.start_or_resume")
    spec = call_recorded("bisect", "-c", "1-8", "-o", str(tmp_path / "run")).args_[1]
    assert spec.space == SearchSpace(1, 8)
    assert spec.settings == Settings()
    assert spec.base == Scenario(load=LoadSettings(prompt_len=(128, 1024)))


def test_bisect_resume_hands_the_directory_to_the_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--resume DIR: no new spec, the journal there is continued."""
    recorder(monkeypatch, "repro.bisect.driver.start_or_resume")
    run_dir, spec, resume = call_recorded("bisect", "--resume", str(tmp_path)).args_
    assert (run_dir, spec, resume) == (tmp_path, None, True)


# --- analyze, issue, known, report, scrub, health ------------------------------------------------------------


def test_analyze_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`repro analyze B1 B2 --catalogue C`: the catalogue files go to the loader, the bundles to the reader."""
    loaded: list[object] = []
    monkeypatch.setattr("repro.commands.analyze.cat.load", lambda paths=None: loaded.append(paths) or "CAT")
    recorder(monkeypatch, "repro.commands.analyze.open_bundle")
    rec = call_recorded("analyze", "b1", "b2.tar.gz", "--json", "--threads", "--catalogue", "mine.toml")
    assert loaded == [[Path("mine.toml")]] and rec.args_ == (Path("b1"),)


def test_issue_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`repro issue PATH --template T --storage-template S --bisect D`: each reaches the renderer."""
    (tmp_path / "bis").mkdir()
    (tmp_path / "bis" / "ISSUE_bisect.md").write_text("x")
    monkeypatch.setattr("repro.commands.issue.cat.load", lambda paths=None: None)
    monkeypatch.setattr("repro.commands.issue.find_template", lambda p, name="stall": ("tpl", str(p), name))
    monkeypatch.setattr("repro.commands.issue.open_source", lambda p: type("Src", (), {"notes": [], "path": p})())
    recorder(monkeypatch, "repro.commands.issue.render_source")
    from repro.analyze.issue import STORAGE_TEMPLATE

    rec = call_recorded("issue", "bundle-001", "--template", "t.md", "--storage-template", "s.md",
                        "--bisect", str(tmp_path / "bis"), "-o", "-")
    src, tpl, stpl, bisect_dir = rec.args_
    assert src.path == Path("bundle-001") and bisect_dir == tmp_path / "bis"
    assert tpl == ("tpl", "t.md", "stall") and stpl == ("tpl", "s.md", STORAGE_TEMPLATE)


def test_known_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """`repro known --catalogue A --catalogue B`: both files go to the loader."""
    recorder(monkeypatch, "repro.commands.known.cat.load")
    rec = call_recorded("known", "--check", "b", "--all", "--json", "--catalogue", "a.toml", "--catalogue", "d")
    assert rec.args_ == ([Path("a.toml"), Path("d")],)


def test_report_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`repro report RUN_DIR -o FILE`: the writer gets both."""
    recorder(monkeypatch, "repro.report.write_report")
    assert call_recorded("report", "run", "-o", "x/p.html").args_ == (Path("run"), Path("x/p.html"))
    assert call_recorded("report", "run").args_ == (Path("run"), None)


def test_scrub_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`repro scrub PATH --fix -o OUT --env-allow N`: the source is PATH, the allow-list the --env-allow names."""
    from repro.commands import scrub

    (tmp_path / "b").mkdir()
    seen: list[Path] = []
    monkeypatch.setattr(scrub, "_read_source", lambda p: seen.append(p) or scrub._Source())

    class Policy:
        @staticmethod
        def from_settings(names: tuple[str, ...]) -> None:
            raise Recorded((names,), {})

    monkeypatch.setattr(scrub, "EnvPolicy", Policy)
    rec = call_recorded("scrub", str(tmp_path / "b"), "--fix", "-o", str(tmp_path / "c"), "--env-allow", "A_*")
    assert seen == [tmp_path / "b"] and rec.args_ == (("A_*",),)


def test_health_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`repro health DIR --max-age DUR`: DIR/state.json, the age in seconds; --state-file and its env too."""
    recorder(monkeypatch, "repro.commands.health.check")
    assert call_recorded("health", str(tmp_path), "--max-age", "2m").args_ == (tmp_path / "state.json", 120.0)
    assert call_recorded("health", "--state-file", "/s.json").args_[0] == Path("/s.json")
    monkeypatch.setenv("REPRO_WATCH_STATE_FILE", "/e.json")
    assert call_recorded("health").args_[0] == Path("/e.json")


# --- one name per knob; the old spellings still accepted ---------------------------------------------------


def watch_settings_of(*args: str, tmp: Path) -> WatchSettings:
    return call_recorded("watch", "--serve", "--storage", str(tmp / "hs"), *args, "-o", str(tmp / "run")).args_[1]


@pytest.mark.parametrize("new, old", [
    (["--samples", "5"], ["--capture-samples", "5"]),
    (["--sample-interval", "0.5"], ["--capture-interval", "0.5"]),
    (["--stall-hook", "echo x"], ["--on-stall", "echo x"]),
    (["--orphan-grace", "2m"], ["--storage-grace", "2m"]),
])
def test_watch_takes_the_unified_names_and_its_old_spellings(new: list[str], old: list[str], watch_recorder: None,
                                                             tmp_path: Path) -> None:
    """watch: --samples, --sample-interval, --stall-hook, --orphan-grace; the old names build the same settings."""
    got = watch_settings_of(*new, tmp=tmp_path)
    assert got == watch_settings_of(*old, tmp=tmp_path) and got != watch_settings_of(tmp=tmp_path)


@pytest.mark.parametrize("new, old", [
    (["--sample-interval", "0.5"], ["--interval", "0.5"]),
    (["--bundle-budget", "5MB"], ["--size-budget", "5MB"]),
])
def test_capture_takes_the_unified_names_and_its_old_spellings(new: list[str], old: list[str],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """capture: --sample-interval and --bundle-budget as in stress; --interval and --size-budget still work."""
    recorder(monkeypatch, "repro.capture.run.capture")
    monkeypatch.setattr("repro.commands.capture._resolve_pid", lambda pid: pid)

    def settings(*args: str) -> CaptureSettings:
        return call_recorded("capture", "--pid", "1", *args, "-o", str(tmp_path / "b")).args_[0].settings

    assert settings(*new) == settings(*old) != settings()


@pytest.mark.parametrize("command, flags", [
    ("stress", ["--samples", "--sample-interval", "--bundle-budget", "--window", "--min-bad", "--orphan-grace",
                "--api-key", "--on-stall"]),
    ("watch", ["--samples", "--sample-interval", "--window", "--min-bad", "--orphan-grace", "--api-key",
               "--stall-hook"]),
    ("capture", ["--samples", "--sample-interval", "--bundle-budget", "--api-key"]),
    ("bisect", ["--window", "--min-bad", "--on-stall"]),
])
def test_help_shows_the_unified_names_only(command: str, flags: list[str]) -> None:
    """--help documents one spelling per knob; the old ones are accepted but not shown."""
    from click.testing import CliRunner

    from repro.cli import cli

    out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
    for flag in flags:
        assert f"{flag} " in out, (flag, out)
    for old in ("--capture-samples", "--capture-interval", "--size-budget", "--storage-grace", "--interval "):
        assert old not in out, (old, out)


@pytest.mark.parametrize("args, text", [
    (["stress", "--min-bad", "0"], "--min-bad must be at least 1"),
    (["bisect", "-c", "1-4", "--min-bad", "0"], "--min-bad must be at least 1"),
    (["watch", "--serve", "--min-bad", "0"], "--min-bad must be at least 1"),
    (["stress", "--samples", "51"], "--samples must be at most 50"),
    (["watch", "--serve", "--samples", "0"], "--samples must be at least 1"),
    (["capture", "--pid", "1", "--bundle-budget", "0"], "--bundle-budget must be positive"),
    (["stress", "--window", "0"], "--window must be positive"),
    (["watch", "--serve", "--window", "0"], "--window must be positive"),
])
def test_one_range_check_per_knob_in_every_command(args: list[str], text: str, tmp_path: Path) -> None:
    """A range is checked once, by the settings class's validate(): every command that offers the knob refuses
    the same bad value with the same one line (exit 2), before anything starts."""
    r = repro_inprocess(*args, "-o", str(tmp_path / "run"))
    one_line_error(r, 2, text)


def test_bisect_takes_prompt_len_as_stress_does_and_its_old_spelling(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """bisect's trial load: --prompt-len as in stress; --workload-prompt-len still works."""
    recorder(monkeypatch, "repro.bisect.driver.start_or_resume")

    def base(*args: str) -> Scenario:
        spec = call_recorded("bisect", "-c", "1-8", *args, "-o", str(tmp_path / "run")).args_[1]
        assert spec.base is not None
        return spec.base

    assert base("--prompt-len", "16-64").load.prompt_len == (16, 64)
    assert base("--workload-prompt-len", "16-64") == base("--prompt-len", "16-64")
