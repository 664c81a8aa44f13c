"""Record the format fixtures beside this file with the repro that runs it (run from the repository root).

    PYTHONPATH=$PWD python tests/unit/data/formats/record.py

Writes, into tests/unit/data/formats/:
  bundle/          `repro capture` of the fake hung vLLM server (tests/unit/capture_targets), no collect-env
  bisect-sim/      `repro bisect --simulate` of a small model (journal.jsonl, minimal.json, ...)
  bisect-real/     the journal header a real (non-simulated) `repro bisect` writes before its first trial
  scenario.json    ``Scenario.write`` of a scenario with non-default settings
The stress and watch run directories are copies of tests/unit/data/report-runs/{stress-stall,watch}
(real runs, see that directory's README.md), copied by this script too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

MODEL = """[space]
concurrency = [1, 8]
changes = ["storage=/mnt/nfs/hs"]
[hazard]
mean_time_to_hang = "1h"
requires = ["storage"]
[sim]
seed = 1
"""


def repro(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "repro", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def main() -> None:
    from repro.bisect import driver
    from repro.bisect.search import Settings
    from repro.bisect.space import SearchSpace, Change
    from repro.scenario import Scenario
    from tests.unit.capture_targets.harness import start_fake

    for name in ("bundle", "bisect-sim", "bisect-real", "stress", "watch"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        srv = start_fake(t, "scheduler", secrets=False)
        try:
            repro("capture", "--pid", str(srv.pid), "--url", srv.url, "--log-file", str(srv.log),
                  "--samples", "1", "--interval", "0", "--no-collect-env", "--redact-hosts",
                  "--out", str(t / "bundle"))
        finally:
            srv.stop()
        shutil.copytree(t / "bundle", HERE / "bundle")
        (t / "m.toml").write_text(MODEL)
        repro("bisect", "--simulate", str(t / "m.toml"), "--out", str(t / "sim"))
        shutil.copytree(t / "sim", HERE / "bisect-sim")
    (HERE / "bisect-sim" / "journal.txt").unlink(missing_ok=True)
    scn = Scenario()
    scn.load.concurrency, scn.load.prompt_len, scn.detect.window = 16, (16, 256), 20.0
    scn.server.inject = "stall-after=30"
    scn.write(HERE / "scenario.json")
    space = SearchSpace(1, 8, (Change.parse("storage=/mnt/nfs/hs"),))
    spec = driver.SearchSpec(space, Settings(), "real", {"simulate": None, "parallel": 1, "heartbeat": 5.0,
                                                           "reuse_server": True, "scenario": scn.to_dict()})
    (HERE / "bisect-real").mkdir()
    driver.start_or_resume(HERE / "bisect-real", spec, False)
    runs = ROOT / "tests" / "unit" / "data" / "report-runs"
    shutil.copytree(runs / "stress-stall", HERE / "stress")
    shutil.copytree(runs / "watch", HERE / "watch")


if __name__ == "__main__":
    main()
