"""vLLM's processes are recognised by the titles vLLM sets, read from cmdline."""

import os
import subprocess
import sys
import time

import pytest

from repro.server import procs


@pytest.mark.parametrize("title, role", [
    ("VLLM::EngineCore", "engine_core"),
    ("VLLM::EngineCore_DP1", "engine_core"),
    ("VLLM::Worker_TP0", "worker"),
    ("VLLM::Worker_PP1_TP3", "worker"),
    ("VLLM::APIServer", "api_server"),
    ("/venv/bin/python3 /venv/bin/vllm serve /m --port 8000", "launcher"),
    ("python -m vllm.entrypoints.openai.api_server --model x", "launcher"),
    ("python train.py", "other"),
])
def test_titles_map_to_roles(title, role):
    assert procs.classify(title) == role


def test_labels_are_short_and_stable():
    assert procs.VllmProcess(1, 0, "worker", "VLLM::Worker_TP0").label == "Worker_TP0"
    assert procs.VllmProcess(1, 0, "api_server", "/bin/vllm serve m").label == "APIServer"


def test_a_process_tree_is_found_from_its_root_engine_core_first():
    """GIVEN a launcher whose children carry vLLM titles (exec -a) WHEN found from the root THEN roles are right."""
    script = (
        "import subprocess, sys, time\n"
        "a = subprocess.Popen(['bash', '-c', 'exec -a VLLM::Worker_TP0 sleep 30'])\n"
        "b = subprocess.Popen(['bash', '-c', 'exec -a VLLM::EngineCore sleep 30'])\n"
        "time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script, "vllm", "serve"], start_new_session=True)
    try:
        deadline = time.time() + 10
        found = []
        while time.time() < deadline:
            found = procs.find_vllm_processes(p.pid)
            if len(found) == 3:
                break
            time.sleep(0.1)
        assert [v.role for v in found] == ["engine_core", "worker", "api_server"]
        assert found[-1].pid == p.pid
    finally:
        os.killpg(p.pid, 9)
        p.wait()
