"""Watching a vLLM server: /metrics and stats-log parsing, log following, and the stall detector.

The detector (:mod:`repro.monitor.detector`) is a pure object: it is fed typed
observations with their time and never reads a clock, a socket or a file, so
recorded sequences replay exactly in tests and ``repro watch`` reuses it.
"""
