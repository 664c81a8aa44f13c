#!/usr/bin/env python3
"""Build the tiny random Llama the kit serves by default: make_tiny_model.py [OUT_DIR].

Same as `repro serve --build-tiny-model OUT_DIR`. Without OUT_DIR it builds into the cache
(~/.cache/repro/tiny-llama-v1) that `repro serve` uses.
"""
import sys

from repro.target import tinymodel

if __name__ == "__main__":
    out = tinymodel.build(sys.argv[1]) if len(sys.argv) > 1 else tinymodel.ensure()
    print(out)
