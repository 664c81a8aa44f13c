"""The vLLM target: build a model, launch or attach a server, find its processes."""
