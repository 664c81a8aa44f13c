"""What a caller (stress, watch, `repro capture`) hands to the capture stage, and what it gets back.

This is the contract between detection and capture: stress and watch fill a
:class:`CaptureRequest` from what they know at the moment of the stall; the
capture stage (``repro.capture.run.capture``) never needs anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.scenario import CaptureSettings, Scenario, ServerRecord


@dataclass
class CaptureRequest:
    out_dir: Path  # the bundle directory to create (e.g. <run>/bundle-001); the tarball goes beside it
    settings: CaptureSettings = field(default_factory=CaptureSettings)
    root_pid: int | None = None  # the server's root process (launched by repro, or --pid)
    url: str | None = None  # the server's base URL, for /metrics before and after sampling
    api_key: str | None = field(default=None, repr=False)
    log_path: Path | None = None  # the server log (repro's own, or --log-file)
    docker: str | None = None  # container name when the server runs in Docker
    storage_path: str | None = None  # the hidden-state storage directory
    storage_accounting: dict[str, Any] | None = None  # the run's orphan census, growth curve and projection (stress)
    scenario: Scenario | None = None  # the run's settings (written to context/scenario.json)
    server_record: ServerRecord | None = None  # what the run learned about its server (connector, log, command)
    events: list[dict[str, Any]] = field(default_factory=list)  # detector events of the run so far
    timeline_csv: Path | None = None  # the run's timeline (for the plot)
    detection: dict[str, Any] | None = None  # the verdict that triggered capture: class, since, evidence
    server_command: list[str] | None = None
    server_env: dict[str, str] | None = field(default=None, repr=False)
    reason: str = "manual"  # stall | manual | watchdog
    repro_command: list[str] | None = None  # the repro invocation that reproduces this (for ISSUE.md); redacted


@dataclass
class Bundle:
    dir: Path
    tarball: Path | None
    manifest: dict[str, Any]
    verdict: dict[str, Any] | None = None  # analysis summary (stuck threads, signature)
    errors: list[str] = field(default_factory=list)
    not_packed: str | None = None  # why there is no tarball (the last check could not read a file): one line
