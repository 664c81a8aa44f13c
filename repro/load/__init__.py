"""The load generator of ``repro stress``: prompts, workloads, the async runner and its records.

The entry point is :func:`repro.load.runner.run_stress`.
"""
