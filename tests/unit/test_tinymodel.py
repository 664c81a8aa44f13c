"""The tiny model's builder, in its larger GPU shape.

Contract: hidden/layers/dtype give a Llama of hidden/64 heads of 64 with a quarter as many KV heads and
weights stored in that dtype; the marker file records the shape so that `repro serve` serves it in that
dtype; a bad dtype or shape is a UsageError before anything is built.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.scenario import ServerSettings
from repro.server import tinymodel
from repro.server.launcher import build_launch

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None or
                                 importlib.util.find_spec("transformers") is None,
                                 reason="building a model needs torch and transformers")


def _dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


@needs_torch
def test_a_bf16_build_has_the_gpu_shape_and_is_served_in_bf16(tmp_path: Path) -> None:
    out = tinymodel.build(tmp_path / "m", hidden=256, layers=3, dtype="bfloat16")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"]) == (256, 3, 4, 1, 64, 768)
    assert _dtypes(next(out.glob("*.safetensors"))) == {"BF16"}
    meta = json.loads((out / "repro-tiny-model.json").read_text())
    assert (meta["hidden"], meta["layers"], meta["dtype"]) == (256, 3, "bfloat16") and meta["parameters"] > 0
    assert tinymodel.model_dtype(out) == "bfloat16" and tinymodel.model_layers(out) == 3
    cmd, _ = build_launch(ServerSettings(model=str(out), storage=str(tmp_path / "hs"), vllm_cmd=["vllm", "serve"]),
                          tmp_path)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"


@pytest.mark.parametrize("kw", [{"dtype": "int8"}, {"hidden": 300}, {"layers": 0}])
def test_bad_shapes_and_dtypes_are_refused_before_building(kw: dict, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        tinymodel.build(tmp_path / "m", **kw)
    assert not (tmp_path / "m").exists()
