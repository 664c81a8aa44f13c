#!/usr/bin/env python3
"""Build the tiny random Llama the kit serves by default: make_tiny_model.py [OUT_DIR [HIDDEN LAYERS [DTYPE]]].

Same as `repro serve --build-tiny-model OUT_DIR`. Without OUT_DIR it builds into the cache
(~/.cache/repro/tiny-llama-v1) that `repro serve` uses. `make_tiny_model.py DIR 1024 8 bfloat16`
builds the 97 M-parameter bf16 sibling used on GPUs.
"""
import sys

from repro.server import tinymodel

if __name__ == "__main__":
    if len(sys.argv) > 2:
        out = tinymodel.build(sys.argv[1], hidden=int(sys.argv[2]), layers=int(sys.argv[3]),
                              dtype=sys.argv[4] if len(sys.argv) > 4 else "bfloat16")
    else:
        out = tinymodel.build(sys.argv[1]) if len(sys.argv) > 1 else tinymodel.ensure()
    print(out)
