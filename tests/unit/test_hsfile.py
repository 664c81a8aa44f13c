"""Hidden-state files of every dtype a connector writes are read and verified without torch.

Contract: a file written by torch's ``safetensors.torch.save_file`` (what vLLM's connectors call)
with ``hidden_states`` in bfloat16, float16, float32 -- or float8_e4m3fn with per-token scales,
as hs-connectors' FP8 connector writes it -- is decoded to the same values torch reads, passes
:class:`FileChecker` when it matches the prompt, and fails with a named error class when its
values, scales, dtypes or container are wrong. The reader itself never imports torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # torch writes the files here as vLLM does; the reader does not need it
from safetensors.torch import save_file  # noqa: E402

from repro.hsfiles import hsfile  # noqa: E402
from repro.hsfiles.checker import FileChecker  # noqa: E402

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]
DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def fp8_quantize(t: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """hs-connectors 0.9.0's ``quantize_tensor_to_fp8`` (per-token scale = amax / FP8 max)."""
    fp8 = torch.float8_e4m3fn
    f = t.float()
    amax = f.abs().amax(dim=tuple(range(1, f.dim())), keepdim=True)
    scale = (amax / torch.finfo(fp8).max).clamp(min=1e-12)
    return (f / scale).to(fp8), scale


def write(path: Path, hs: "torch.Tensor", tokens: list[int] = TOKENS, **extra: "torch.Tensor") -> str:
    save_file({"hidden_states": hs.contiguous(), "token_ids": torch.tensor(tokens, dtype=torch.int64), **extra},
              str(path))
    return str(path)


def sample(dtype: "torch.dtype", layers: int = 3, hidden: int = 16) -> "torch.Tensor":
    g = torch.Generator().manual_seed(0)
    return (torch.randn(len(TOKENS), layers, hidden, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("code", sorted(DTYPES))
def test_each_model_dtype_decodes_to_the_values_torch_reads(tmp_path: Path, code: str) -> None:
    """GIVEN hidden states saved by torch in CODE WHEN read THEN the stored dtype is CODE and the values equal torch's."""
    hs = sample(DTYPES[code])
    f = hsfile.read(write(tmp_path / "a.safetensors", hs))
    assert f.dtype == code and not f.quantized
    np.testing.assert_array_equal(f.values(), hs.float().numpy())
    assert f.token_ids.tolist() == TOKENS


@pytest.mark.parametrize("code", sorted(DTYPES))
def test_each_model_dtype_passes_the_checker_and_is_consumed(tmp_path: Path, code: str) -> None:
    p = write(tmp_path / "b.safetensors", sample(DTYPES[code]))
    r = FileChecker("delete", expected_layers=3).check(p, tuple(TOKENS))
    assert r.ok, r.detail
    assert r.dtype == code and r.shape == (len(TOKENS), 3, 16) and r.consumed == "deleted"
    assert not Path(p).exists()


def test_fp8_file_is_dequantized_with_its_per_token_scales(tmp_path: Path) -> None:
    """GIVEN an FP8 file as hs-connectors writes it WHEN read THEN values() = fp8 * scale, close to the original."""
    orig = sample(torch.bfloat16)
    q, scale = fp8_quantize(orig)
    f = hsfile.read(write(tmp_path / "c.safetensors", q, hidden_states_scales=scale))
    assert f.dtype == "F8_E4M3" and f.quantized
    expect = (q.float() * scale).numpy()
    np.testing.assert_allclose(f.values(), expect, rtol=0, atol=0)
    # e4m3 keeps 3 mantissa bits: within 1/16 of each token's largest magnitude
    tol = orig.float().abs().amax(dim=(1, 2), keepdim=True).numpy() / 16
    assert (np.abs(f.values() - orig.float().numpy()) <= tol).all()
    assert FileChecker().check(str(tmp_path / "c.safetensors"), tuple(TOKENS)).ok


def test_fp8_file_without_scales_is_bad_scales(tmp_path: Path) -> None:
    q, _ = fp8_quantize(sample(torch.bfloat16))
    r = FileChecker().check(write(tmp_path / "d.safetensors", q), tuple(TOKENS))
    assert not r.ok and r.error == "bad-scales" and "hidden_states_scales" in r.detail


@pytest.mark.parametrize("bad", ["shape", "zero", "nan"])
def test_fp8_scales_that_are_not_one_positive_finite_value_per_token_are_bad_scales(tmp_path: Path, bad: str) -> None:
    q, scale = fp8_quantize(sample(torch.bfloat16))
    if bad == "shape":
        scale = scale[:-1]
    elif bad == "zero":
        scale[2] = 0.0
    else:
        scale[0] = float("nan")
    r = FileChecker().check(write(tmp_path / "e.safetensors", q, hidden_states_scales=scale), tuple(TOKENS))
    assert not r.ok and r.error == "bad-scales"


@pytest.mark.parametrize("code", ["BF16", "F16"])
def test_a_nan_in_a_half_precision_file_is_bad_values(tmp_path: Path, code: str) -> None:
    hs = sample(DTYPES[code])
    hs[1, 0, 0] = float("nan")
    r = FileChecker().check(write(tmp_path / "f.safetensors", hs), tuple(TOKENS))
    assert not r.ok and r.error == "bad-values" and code in r.detail


def test_integer_hidden_states_are_bad_dtype(tmp_path: Path) -> None:
    r = FileChecker().check(write(tmp_path / "g.safetensors", torch.ones(len(TOKENS), 2, 4, dtype=torch.int32)),
                            tuple(TOKENS))
    assert not r.ok and r.error == "bad-dtype"


def test_a_truncated_file_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    p = write(tmp_path / "h.safetensors", sample(torch.bfloat16))
    data = Path(p).read_bytes()
    Path(p).write_bytes(data[: len(data) - 10])
    r = FileChecker().check(p, tuple(TOKENS))
    assert not r.ok and r.error == "unreadable"


def test_the_reader_works_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    """GIVEN a bf16 file WHEN read in a process where `import torch` fails THEN it decodes and verifies."""
    p = write(tmp_path / "i.safetensors", sample(torch.bfloat16))
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from repro.hsfiles import hsfile\n"
        "from repro.hsfiles.checker import FileChecker\n"
        f"f = hsfile.read({p!r}); assert f.dtype == 'BF16', f.dtype\n"
        f"r = FileChecker('keep').check({p!r}, {tuple(TOKENS)!r}); assert r.ok, r.detail\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
