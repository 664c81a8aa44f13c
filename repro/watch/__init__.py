"""`repro watch`: a production watchdog that captures the evidence of a stall before it restarts.

The pieces, each with one job:

``policy``      when to restart and when to give up (back-off, reset, --max-restarts per hour)
``events``      events.jsonl: every decision, in order
``promstats``   the watchdog's own Prometheus counters (--metrics-port)
``observe``     one poll of the target -> the shared detector's Observation (+ the optional probe)
``servers``     the watched server (a ``Target``) and how it is stopped and started: --serve, --docker, --url/--pid
``storage_duty``  --storage: unclaimed files, storage warnings once per episode, optional reaping
``bounded``     capture under a time budget and the --stall-hook hook, neither ever blocks a restart
``supervisor``  the loop: detect -> capture -> stop -> port free -> start -> healthy

The detector is :class:`repro.monitor.detector.Detector` (the same as ``repro stress``) and
the capture is :func:`repro.capture.run.capture`; nothing here re-implements either.
"""
