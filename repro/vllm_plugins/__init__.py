"""Code that runs inside vLLM's processes: fault injection and a CPU hidden-states connector.

Nothing here may import heavy modules at import time: vLLM loads the fault
plugin in every process (API server, EngineCore, workers).
"""
