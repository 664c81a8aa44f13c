"""Lane on the `killer` server (vLLM 0.24-0.26 on a GPU only): client timeouts of 0.2 s on long prompts
abort requests before they are scheduled (0.05 s ends most requests before they reach the server), and the stock ExampleHiddenStatesConnector's request_finished raises KeyError
inside EngineCore (upstream #56841): repro must call it server-dead, and the run directory is kept for the
death report.
"""

from __future__ import annotations

import pytest

from tests.gpu.harness import profile_from_env, wait_marker
from tests.gpu.helpers import log_shows_56841, run_repro, stress_args, summary

pytestmark = [pytest.mark.gpu]
SLOW = 1 if profile_from_env().gpu else 3


@pytest.mark.timeout(500 * SLOW)
def test_aborts_before_scheduling_kill_the_engine_and_repro_says_server_dead(ctx, gpu_server, step) -> None:  # type: ignore[no-untyped-def]
    srv = gpu_server("killer")
    step.put(waited_for_fidelity_s=wait_marker(ctx, "fidelity-done", 300 * SLOW))
    out = ctx.work / "runs" / "engine-death"
    ran = run_repro(ctx, stress_args(srv, out, "--concurrency", "64", "--duration", "60s", "--request-timeout", "0.2",
                                     "--retries", "0", "--prompt-len", "1024-2048", "--window", "20",
                                     "--startup-grace", "0", "--bundle-budget", "5MB"),
                    out.with_suffix(".log"), timeout=200)
    s = summary(out)
    st = s.get("stall") or {}
    try:
        log = open(srv["log"], errors="replace").read()[-4_000_000:]
    except OSError:
        log = ""
    keyerror = log_shows_56841(srv["log"])
    step.put(exit=ran.rc, stall_class=st.get("class"), detected_s=st.get("detected_s"), keyerror_in_log=keyerror,
             storage_cause=(s.get("storage_cause") or {}).get("kind"), capture=(s.get("capture") or {}).get("status"))
    tail = out.parent / "engine-death-server.log.tail"
    tail.write_text(log[-1_000_000:])
    step.artifact(out, "engine-death-run")
    step.artifact(tail)
    assert ran.rc == 1 and st.get("class") == "server-dead", f"exit {ran.rc}, stall {st}: {ran.tail()}"
    assert keyerror, "no KeyError in request_finished in the server log"
