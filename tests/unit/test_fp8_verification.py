"""FP8 hidden-state files checked against the connector that wrote them.

Files are made the way hs-connectors 0.9.0's FP8HiddenStatesConnector makes them: its own
``quantize_tensor_to_fp8`` on CPU torch, then ``safetensors.torch.save_file`` of
``{**tensors, "hidden_states": fp8, "hidden_states_scales": scales}`` -- once through the connector's
own ``_write_tensors``. Contracts: such a file passes the checker for the fp8 and cpu-fp8 connectors
(also with an all-zero token, whose scale sits at the 1e-12 floor); values not quantized with one amax
scale per token (a tensor-wide scale, a plain cast) and scales shifted onto an all-zero token fail the
per-token scale check while the generic check alone passes them; the fp8 connector's files must be F8_E4M3 with exactly hidden_states,
hidden_states_scales and token_ids, and the stock/cpu connectors' files must not be FP8 and must be in the
model's dtype when the server's --dtype says it; a file rejected for its format is removed, not kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
fp8_utils = pytest.importorskip("hs_connectors.fp8_utils")
from safetensors.torch import save_file  # noqa: E402

from repro.hsfiles.checker import FileChecker  # noqa: E402
from repro.server import connectors  # noqa: E402
from tests.conftest import import_vllm

TOKENS = [11, 12, 13, 14, 15, 16]
FP8 = connectors.resolve("fp8", False).output
CPU_FP8 = connectors.resolve("cpu-fp8", False).output
CPU = connectors.resolve("cpu", False).output


def hidden(dtype: "torch.dtype" = torch.bfloat16, layers: int = 3, hidden_size: int = 32) -> "torch.Tensor":
    g = torch.Generator().manual_seed(1)
    return (torch.randn(len(TOKENS), layers, hidden_size, generator=g) * 5).to(dtype)


def fp8_file(path: Path, hs: "torch.Tensor", scale_edit=None) -> str:
    """What FP8HiddenStatesConnector._write_tensors writes (same dict, same quantization function)."""
    tensors = {"hidden_states": hs, "token_ids": torch.tensor(TOKENS, dtype=torch.int64)}
    fp8_hs, scales = fp8_utils.quantize_tensor_to_fp8(tensors["hidden_states"])
    if scale_edit is not None:
        scales = scale_edit(scales.clone())
    save_file({**tensors, "hidden_states": fp8_hs, fp8_utils.SCALES_KEY: scales}, str(path))
    return str(path)


def check(path: str, layout, **kw):
    return FileChecker("delete", layout=layout, **kw).check(path, tuple(TOKENS))


@pytest.mark.parametrize("layout", [FP8, CPU_FP8], ids=["fp8", "cpu-fp8"])
def test_a_file_as_the_fp8_connector_writes_it_passes(tmp_path: Path, layout) -> None:
    r = check(fp8_file(tmp_path / "a.safetensors", hidden()), layout)
    assert r.ok, r.detail
    assert r.dtype == "F8_E4M3" and r.shape == (len(TOKENS), 3, 32) and r.consumed == "deleted"


def test_an_all_zero_token_sits_at_the_scale_floor_and_passes(tmp_path: Path) -> None:
    hs = hidden()
    hs[2] = 0
    r = check(fp8_file(tmp_path / "z.safetensors", hs), FP8)
    assert r.ok, r.detail


def per_tensor(hs: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """One scale for the whole tensor (another FP8 scheme), written as if it were per token."""
    f = hs.float()
    scale = (f.abs().amax() / 448.0).clamp(min=1e-12)
    return (f / scale).to(torch.float8_e4m3fn), scale.reshape(1, 1, 1).expand(len(TOKENS), 1, 1).contiguous()


def plain_cast(hs: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """A cast to FP8 with no scaling at all, and scales of 1."""
    return hs.float().to(torch.float8_e4m3fn), torch.ones(len(TOKENS), 1, 1)


@pytest.mark.parametrize("quantize", [per_tensor, plain_cast], ids=["per-tensor", "plain-cast"])
def test_values_not_quantized_per_token_fail_the_scale_check(tmp_path: Path, quantize) -> None:
    q, scales = quantize(hidden())
    path = str(tmp_path / "b.safetensors")
    save_file({"hidden_states": q, "token_ids": torch.tensor(TOKENS), fp8_utils.SCALES_KEY: scales}, path)
    assert FileChecker("keep").check(path, tuple(TOKENS)).ok  # well formed: the generic check passes it
    r = check(path, FP8)
    assert not r.ok and r.error == "bad-scales" and "one amax scale per token" in (r.detail or "")
    assert not Path(path).exists()  # a failed file is never kept


def test_scales_shifted_onto_a_zero_token_fail_the_scale_check(tmp_path: Path) -> None:
    hs = hidden()
    hs[2] = 0
    path = fp8_file(tmp_path / "s.safetensors", hs, lambda s: torch.cat([s[1:], s[:1]]))
    r = check(path, FP8)
    assert not r.ok and r.error == "bad-scales" and "token 2 is all zeros" in (r.detail or "")


def test_the_fp8_connector_files_must_be_fp8(tmp_path: Path) -> None:
    plain = tmp_path / "p.safetensors"
    save_file({"hidden_states": hidden(), "token_ids": torch.tensor(TOKENS)}, str(plain))
    r = check(str(plain), FP8)
    assert not r.ok and r.error == "bad-layout" and "missing hidden_states_scales" in (r.detail or "")


def test_an_unexpected_tensor_is_a_bad_layout(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"hidden_states": hidden(), "token_ids": torch.tensor(TOKENS), "extra": torch.zeros(1)}, str(p))
    r = check(str(p), CPU)
    assert not r.ok and r.error == "bad-layout" and "unexpected extra" in (r.detail or "")


def test_the_stock_format_must_not_be_fp8_and_must_be_the_model_dtype(tmp_path: Path) -> None:
    r = check(fp8_file(tmp_path / "f.safetensors", hidden()), CPU)
    assert not r.ok and r.error in ("bad-layout", "bad-dtype")
    p = tmp_path / "h.safetensors"
    save_file({"hidden_states": hidden(torch.float16), "token_ids": torch.tensor(TOKENS)}, str(p))
    r = check(str(p), CPU, model_dtype="BF16")
    assert not r.ok and r.error == "bad-dtype" and "BF16" in (r.detail or "")
    save_file({"hidden_states": hidden(torch.bfloat16), "token_ids": torch.tensor(TOKENS)}, str(p))
    assert check(str(p), CPU, model_dtype="BF16").ok


def test_a_file_from_the_connectors_own_write_step_passes(tmp_path: Path) -> None:
    """FP8HiddenStatesConnector._write_tensors itself (a static method: CPU tensors, an event that is done)."""
    import_vllm()
    from hs_connectors.fp8_hidden_states_connector import FP8HiddenStatesConnector

    class Done:
        def synchronize(self) -> None:
            return None

    path = str(tmp_path / "own.safetensors")
    FP8HiddenStatesConnector._write_tensors({"hidden_states": hidden(), "token_ids": torch.tensor(TOKENS)},
                                            Done(), path, None)
    r = check(path, FP8)
    assert r.ok and r.dtype == "F8_E4M3", r.detail
