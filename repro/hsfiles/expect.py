"""What a hidden-state file must hold for the connector that wrote it (the checker's per-connector expectations).

:func:`repro.hsfiles.hsfile.check_layout` says whether a file is a well-formed hidden-state file of any
dtype. When the connector is known (:class:`repro.server.connectors.Output`), :func:`check` also
holds the file to that connector's format:

* the exact set of tensors (``hidden_states`` + ``token_ids``; FP8 adds ``hidden_states_scales``);
* the dtype of ``hidden_states``: ``F8_E4M3`` for the FP8 connectors, otherwise the model's dtype
  when the server's ``--dtype`` says it (``float32`` -> ``F32``), and never an FP8 type;
* scale sanity for hs-connectors' per-token scaling (``hs_connectors.fp8_utils.quantize_tensor_to_fp8``:
  ``scale = max(amax / 448, 1e-12)`` over each token's layers and hidden units, ``fp8 = x / scale``):
  every token's largest ``|fp8|`` is then exactly 448, the largest float8_e4m3fn value, unless its
  scale sits at the 1e-12 floor, and a token whose values are all zero has exactly that floor. A
  tensor-wide scale, a plain cast to FP8, clipping, or scales shifted onto zero tokens fail this.
  (A scale swapped between two non-zero tokens cannot be seen from the file: the original values
  are gone; finite, positive, one per token is all that can be said of it.)

An unknown connector (``module:Class``, or an attached server without ``--connector``) gets only
what the file itself declares: an FP8 file is dequantized with its scales and checked for finite
values by the layout check.
"""

from __future__ import annotations

import numpy as np

from repro.hsfiles import hsfile
from repro.server.connectors import PER_TOKEN_AMAX, Output

FP8_E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
SCALE_FLOOR = 1e-12  # quantize_tensor_to_fp8 clamps scales at this
TORCH_DTYPES = {"float32": "F32", "float": "F32", "bfloat16": "BF16", "float16": "F16", "half": "F16"}


def dtype_code(vllm_dtype: str | None) -> str | None:
    """vLLM's ``--dtype`` value -> the safetensors code its hidden states are stored as (None: not known)."""
    return TORCH_DTYPES.get((vllm_dtype or "").lower())


def check(f: hsfile.HiddenStateFile, out: Output | None, model_dtype: str | None = None) -> tuple[str, str] | None:
    """``(error class, detail)`` when the file is not what the connector writes; None when it is (or out is None)."""
    if out is None:
        return None
    names = set(f.tensors)
    want = set(out.tensors)
    if names != want:
        extra, missing = sorted(names - want), sorted(want - names)
        what = "; ".join(x for x in (f"unexpected {', '.join(extra)}" if extra else "",
                                     f"missing {', '.join(missing)}" if missing else "") if x)
        return "bad-layout", f"the file holds {', '.join(sorted(names))} ({what}): this connector writes {', '.join(out.tensors)}"
    got = f.dtype
    if out.hs_dtype is not None and got != out.hs_dtype:
        return "bad-dtype", f"hidden_states is stored as {got}; this connector writes {out.hs_dtype}"
    if out.hs_dtype is None:
        if got in hsfile.FP8:
            return "bad-dtype", f"hidden_states is stored as {got}, but this connector writes the model's dtype"
        if model_dtype is not None and got != model_dtype:
            return "bad-dtype", f"hidden_states is stored as {got}; the server runs the model in {model_dtype}"
    if out.scaling == PER_TOKEN_AMAX:
        if f.dtypes.get(hsfile.SCALES) != "F32":
            return "bad-dtype", f"{hsfile.SCALES} is stored as {f.dtypes.get(hsfile.SCALES)}; this connector writes F32"
        return per_token_amax(f)
    return None


def per_token_amax(f: hsfile.HiddenStateFile) -> tuple[str, str] | None:
    """hs-connectors' per-token scaling: each token's max |fp8| is 448 unless its scale is at the 1e-12 floor,
    and an all-zero token has exactly the floor."""
    hs, sc = f.hidden_states, f.tensors.get(hsfile.SCALES)
    assert hs is not None and sc is not None  # check_layout ran first
    q = np.abs(hs.astype(np.float32)).reshape(hs.shape[0], -1)
    peak = q.max(axis=1) if q.shape[1] else np.zeros(hs.shape[0], dtype=np.float32)
    scale = sc.astype(np.float32).reshape(-1)
    floored = scale <= SCALE_FLOOR * (1 + 1e-6)
    zero = peak == 0
    bad_zero = np.flatnonzero(zero & ~floored)
    if bad_zero.size:
        t = int(bad_zero[0])
        return "bad-scales", (f"token {t} is all zeros but its scale is {float(scale[t]):.3g}, not the "
                              f"{SCALE_FLOOR:g} floor: the scales do not line up with the tokens")
    bad_peak = np.flatnonzero(~floored & ~zero & (peak != FP8_E4M3_MAX))
    if bad_peak.size:
        t = int(bad_peak[0])
        return "bad-scales", (f"{bad_peak.size} of {hs.shape[0]} tokens were not quantized with one amax scale per "
                              f"token (token {t}: largest |fp8| is {float(peak[t]):g}, not {FP8_E4M3_MAX:g}, with "
                              f"scale {float(scale[t]):.3g})")
    return None
