"""Read a hidden-state file of any dtype a vLLM connector writes, without torch.

vLLM's ``ExampleHiddenStatesConnector`` (and repro's CPU connector) writes ``hidden_states``
``[prompt_tokens, layers, hidden]`` in the model's dtype -- bfloat16 on GPUs, float16 or float32
elsewhere -- and ``token_ids`` ``[prompt_tokens]`` (int64). hs-connectors'
``FP8HiddenStatesConnector`` writes ``hidden_states`` as ``float8_e4m3fn`` with per-token
``hidden_states_scales`` (float32 ``[prompt_tokens, 1, 1]``): the values are ``fp8 * scale``.

How it reads (the choice, and why):

* the container format is parsed and validated by safetensors itself
  (``safetensors.deserialize``: header, dtypes, offsets), never by hand;
* the tensor bytes become numpy arrays through ``ml_dtypes`` (Google's numpy dtypes for
  bfloat16 and the float8 formats, used by JAX and TensorFlow), because numpy has no bfloat16
  and ``safetensors.numpy`` refuses BF16 (``data type 'bfloat16' not understood``);
* torch is not needed: the kit runs beside any vLLM, or on a machine with no torch at all
  when it attaches to a remote server.

:func:`read` returns a :class:`HiddenStateFile`; :meth:`HiddenStateFile.values` gives the hidden
states as float32 (dequantized for FP8) for the finite-value check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

HIDDEN_STATES = "hidden_states"
TOKEN_IDS = "token_ids"
SCALES = "hidden_states_scales"  # hs-connectors' fp8_utils.SCALES_KEY

# safetensors dtype codes -> numpy dtypes (the codes are safetensors' own, see its Dtype enum)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
FP8 = frozenset({"F8_E4M3", "F8_E5M2"})
FLOAT = frozenset({"F64", "F32", "F16", "BF16"}) | FP8


class HiddenStateFileError(Exception):
    """A file that cannot be read as a hidden-state file; ``kind`` is the checker's error class."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # unreadable | bad-dtype
        self.detail = detail


@dataclass
class HiddenStateFile:
    """The tensors of one safetensors file, in their stored dtypes (``dtypes`` keeps the codes)."""

    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str]
    nbytes: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def hidden_states(self) -> np.ndarray | None:
        return self.tensors.get(HIDDEN_STATES)

    @property
    def token_ids(self) -> np.ndarray | None:
        return self.tensors.get(TOKEN_IDS)

    @property
    def dtype(self) -> str | None:
        """The stored dtype code of ``hidden_states`` (BF16, F16, F32, F8_E4M3, ...)."""
        return self.dtypes.get(HIDDEN_STATES)

    @property
    def quantized(self) -> bool:
        return self.dtype in FP8

    def values(self) -> np.ndarray:
        """``hidden_states`` as float32: a widening cast, or ``fp8 * scale`` for an FP8 file."""
        hs = self.hidden_states
        if hs is None:
            raise KeyError(HIDDEN_STATES)
        out = hs.astype(np.float32)
        if self.quantized:
            out *= self.tensors[SCALES].astype(np.float32)
        return out


def decode(payload: bytes) -> HiddenStateFile:
    """Parse the bytes of a safetensors file (validated by safetensors) into numpy arrays."""
    import safetensors

    try:
        entries = safetensors.deserialize(payload)
    except Exception as exc:  # safetensors raises SafetensorError (and others for a broken header)
        raise HiddenStateFileError("unreadable", f"{type(exc).__name__}: {exc}") from None
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, t in entries:
        code = str(t["dtype"])
        dt = DTYPES.get(code)
        if dt is None:
            raise HiddenStateFileError("bad-dtype", f"{name} is stored as {code}, which repro cannot read "
                                                    f"(known: {', '.join(sorted(DTYPES))})")
        tensors[name] = np.frombuffer(t["data"], dtype=dt).reshape(t["shape"])
        dtypes[name] = code
    return HiddenStateFile(tensors, dtypes, len(payload))


def read(path: str) -> HiddenStateFile:
    """Read and decode one file; an OS error or a malformed file is a :class:`HiddenStateFileError`."""
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as exc:
        raise HiddenStateFileError("unreadable", f"{type(exc).__name__}: {exc}") from None
    return decode(payload)


def check_layout(f: HiddenStateFile, expected_layers: int | None = None) -> tuple[str, str] | None:
    """Shape and dtype checks of a decoded file: ``(error class, detail)`` or None when it is well formed."""
    hs, ids = f.hidden_states, f.token_ids
    if hs is None or ids is None:
        return "bad-shape", "the file lacks hidden_states or token_ids"
    if f.dtype not in FLOAT:
        return "bad-dtype", f"hidden_states is stored as {f.dtype}, not a floating-point type"
    if f.dtypes.get(TOKEN_IDS, "").startswith(("F", "BF", "BOOL")):
        return "bad-dtype", f"token_ids is stored as {f.dtypes[TOKEN_IDS]}, not an integer type"
    if hs.ndim != 3 or ids.ndim != 1 or hs.shape[0] != ids.shape[0] or hs.shape[0] == 0:
        return "bad-shape", (f"hidden_states {list(hs.shape)} vs token_ids {list(ids.shape)}: "
                             "expected [T, layers, hidden] with T = len(token_ids)")
    if expected_layers is not None and hs.shape[1] != expected_layers:
        return "bad-shape", f"hidden_states has {hs.shape[1]} layers, expected {expected_layers}"
    if f.quantized:
        sc = f.tensors.get(SCALES)
        if sc is None:
            return "bad-scales", f"hidden_states is {f.dtype} but the file has no {SCALES}"
        if f.dtypes[SCALES] not in FLOAT - FP8:
            return "bad-scales", f"{SCALES} is stored as {f.dtypes[SCALES]}, expected a float type"
        if sc.ndim != hs.ndim or sc.shape[0] != hs.shape[0] or any(d != 1 for d in sc.shape[1:]):
            return "bad-scales", (f"{SCALES} {list(sc.shape)} does not hold one scale per token of "
                                  f"hidden_states {list(hs.shape)} (expected [{hs.shape[0]}, 1, 1])")
        s = sc.astype(np.float32)
        if not np.isfinite(s).all() or (s <= 0).any():
            return "bad-scales", f"{SCALES} holds a value that is not a positive finite number"
    return None
