"""scenario.json is written by Scenario.write and read by Scenario.read only; bad files are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.scenario import LoadSettings, Scenario, ServerRecord, ServerSettings


def _written(tmp_path: Path, record: ServerRecord | None = None) -> Path:
    scn = Scenario(server=ServerSettings(port=8123, inject="stall-after=30"), load=LoadSettings(prompt_len=(4, 9)),
                   api_key="sk-never-written")
    scn.write(tmp_path / "scenario.json", record)
    return tmp_path / "scenario.json"


def test_a_written_scenario_reads_back_equal_with_its_server_record_beside_it(tmp_path: Path) -> None:
    """write then read gives the same Scenario (without the API key); the record comes back on its own."""
    rec = ServerRecord(server_command=["vllm", "serve"], server_command_source="launched",
                       connector={"name": "cpu"})
    p = _written(tmp_path, rec)
    doc = json.loads(p.read_text())
    assert list(doc)[:2] == ["schema", "version"] and doc["schema"] == "repro.scenario" and doc["version"] == 2
    assert "sk-never-written" not in p.read_text() and doc["server_command"] == ["vllm", "serve"]
    scn, back = Scenario.read_with_record(p)
    assert scn == Scenario(server=ServerSettings(port=8123, inject="stall-after=30"),
                           load=LoadSettings(prompt_len=(4, 9)))
    assert back == rec


@pytest.mark.parametrize("change, words", [
    (lambda d: d["load"].update(promt_len=[1, 2]), "unknown scenario key(s) load.promt_len"),
    (lambda d: d.update(storage_horizn=5), "unknown scenario key(s) storage_horizn"),
    (lambda d: d["detect"].pop("window"), "scenario key(s) missing: detect.window"),
    (lambda d: d.pop("capture"), "scenario key(s) missing: capture"),
    (lambda d: d.update(version=3), "newer than this repro reads"),
    (lambda d: d.update(schema="repro.bundle"), "a repro.bundle file, not repro.scenario"),
    (lambda d: d.update(load=[1]), "'load' must be an object"),
    (lambda d: d["server"].update(port={"x": 1}, host=None, env=3), None),
])
def test_a_damaged_or_foreign_scenario_is_a_one_line_usage_error(tmp_path: Path, change, words: str | None) -> None:
    """Unknown or (in version 2) missing keys are named; foreign and future files say so; exit 2, one line."""
    p = _written(tmp_path)
    d = json.loads(p.read_text())
    change(d)
    p.write_text(json.dumps(d))
    if words is None:  # values of the wrong type are the settings' validate()'s job, not the reader's
        Scenario.read(p)
        return
    with pytest.raises(UsageError) as e:
        Scenario.read(p)
    msg = str(e.value)
    assert words in msg and str(p) in msg and "\n" not in msg and e.value.exit_code == 2


def test_an_earlier_scenario_without_newer_keys_takes_their_defaults(tmp_path: Path) -> None:
    """Version 1 (``schema_version``) files predate some settings: missing ones take today's defaults."""
    p = tmp_path / "scenario.json"
    p.write_text(json.dumps({"schema_version": 1, "load": {"concurrency": 7}, "server": {"port": 9},
                             "server_command": ["vllm", "serve", "m"]}))
    scn, rec = Scenario.read_with_record(p)
    assert scn.load.concurrency == 7 and scn.server.port == 9 and scn.detect == Scenario().detect
    assert rec.server_command == ["vllm", "serve", "m"]


def test_a_trial_job_file_carries_the_scenario_typed_across_the_process_boundary(tmp_path: Path) -> None:
    """The Ray payload holds a Scenario; job.json serialises it (repro.trial-job) and the node job types it
    again; a job file of a newer repro is a one-line error."""
    from repro.executors.node import job_file
    from repro.executors.node_job import read_job

    scn = Scenario(server=ServerSettings(port=9100))
    p = tmp_path / "job.json"
    p.write_text(json.dumps(job_file({"kind": "stress", "name": "replica-0", "scenario": scn})))
    job = read_job(p)
    assert job["scenario"] == scn and job["name"] == "replica-0"
    p.write_text(json.dumps({**json.loads(p.read_text()), "version": 99}))
    with pytest.raises(UsageError, match="newer than this repro"):
        read_job(p)


def test_a_setting_renamed_since_reads_from_an_earlier_files_old_key(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry of RENAMED maps an earlier file's key to today's field (here: a made-up old name)."""
    import repro.scenario as sc

    monkeypatch.setattr(sc, "RENAMED", {"capture.rounds": "capture.samples", "grace": "orphan_grace"})
    p = tmp_path / "scenario.json"
    p.write_text(json.dumps({"schema_version": 1, "capture": {"rounds": 7}, "grace": 3.0}))
    scn = Scenario.read(p)
    assert scn.capture.samples == 7 and scn.orphan_grace == 3.0
