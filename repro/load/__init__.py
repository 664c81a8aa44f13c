"""The load generator of ``repro stress``: prompts, workloads, the async runner and its records.

The entry point is :func:`repro.load.runner.run_stress`. The hidden-state file of each response is verified by
:mod:`repro.hsfiles` (shared with ``repro watch``).
"""
