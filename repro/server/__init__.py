"""The vLLM server under test: build a tiny model, launch or attach a server, find its processes."""
