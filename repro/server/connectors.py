"""Hidden-states connectors: which vLLM KV connector writes the hidden states, and what it hands back.

``--connector`` names one of the connectors below, ``auto``, or any class given as
``module:Class`` (the module must be importable in vLLM's own Python: vLLM loads it with
``kv_connector_module_path`` in EngineCore and in every Worker).

============  ===========================================  =====================================
name          class (module)                               writes
============  ===========================================  =====================================
stock         ExampleHiddenStatesConnector (vLLM)          model dtype; GPU only in vLLM >= 0.22
cpu           CpuHiddenStatesConnector (repro)             model dtype, synchronous (0.20.2 way)
fp8           FP8HiddenStatesConnector (hs-connectors)     float8_e4m3fn + per-token scales; GPU
cpu-fp8       CpuFP8HiddenStatesConnector (repro)          the fp8 format, written on CPU
mooncake      MooncakeHiddenStatesConnector (hs-conn.)     no file: a ``handle`` in a Mooncake store
============  ===========================================  =====================================

``auto`` is ``cpu`` where no GPU is visible, ``stock`` otherwise. A :class:`Connector` says
how to configure it (:meth:`Connector.kv_transfer_config`) and what its output looks like
(:class:`Output`): the response key (``hidden_states_path`` or ``handle``), the dtype it stores
``hidden_states`` in, the exact tensors of a file and how FP8 scales were made -- the
expectations the file checker enforces. A ``module:Class`` of the user's has no known output:
the checker then verifies what the file itself says (an FP8 file by its scales).

:func:`probe` checks, before vLLM is started, that a connector's module imports in vLLM's Python
and that the class is a vLLM KV connector: a typo costs one line and exit 2, not a dead engine
a minute later.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from repro.errors import UsageError

AUTO, STOCK, CPU, FP8, CPU_FP8, MOONCAKE = "auto", "stock", "cpu", "fp8", "cpu-fp8", "mooncake"
FILE, HANDLE = "file", "handle"  # how hidden states travel: a safetensors file, or a key in a store
FP8_E4M3 = "F8_E4M3"  # safetensors' dtype code for float8_e4m3fn
SCALES = "hidden_states_scales"  # hs_connectors.fp8_utils.SCALES_KEY
PER_TOKEN_AMAX = "per-token-amax"  # hs_connectors.fp8_utils: scale = max(amax / FP8_MAX, 1e-12) per token
PLAIN_TENSORS = ("hidden_states", "token_ids")
FP8_TENSORS = ("hidden_states", SCALES, "token_ids")
HS_CONNECTORS_INSTALL = "pip install hs-connectors==0.9.0 into vLLM's environment (the same --target as vLLM)"


@dataclass(frozen=True)
class Output:
    """What a connector hands back for one request: the checker's expectations."""

    transfer: str  # file | handle
    hs_dtype: str | None = None  # the safetensors code of hidden_states; None: the model's dtype (any non-FP8 float)
    tensors: tuple[str, ...] = PLAIN_TENSORS  # exactly the tensors of a file
    scaling: str | None = None  # how FP8 scales were made (PER_TOKEN_AMAX), None: not quantized

    @property
    def quantized(self) -> bool:
        return self.scaling is not None


@dataclass(frozen=True)
class Connector:
    """One hidden-states connector, resolved from ``--connector``."""

    name: str  # stock | cpu | fp8 | cpu-fp8 | mooncake | module:Class (auto is resolved away)
    kv_connector: str  # the class name vLLM is given
    module_path: str | None  # kv_connector_module_path; None: one of vLLM's own connectors
    source: str  # vllm | repro | hs-connectors | user
    output: Output | None  # None: unknown (a module:Class of the user's)
    cpu: bool  # works on a CPU build of vLLM
    note: str = ""
    extra_config: dict[str, Any] = field(default_factory=dict)  # kv_connector_extra_config beyond the storage
    requires: tuple[str, ...] = ()  # top-level packages that must be installed beside vLLM (a known connector)

    @property
    def transfer(self) -> str:
        return self.output.transfer if self.output is not None else FILE

    @property
    def writes_files(self) -> bool:
        return self.transfer == FILE

    def kv_transfer_config(self, storage: str | None) -> dict[str, Any]:
        """The ``--kv-transfer-config`` object (storage: the shared_storage_path of a file connector)."""
        extra = dict(self.extra_config)
        if self.writes_files and storage is not None:
            extra["shared_storage_path"] = storage
        cfg: dict[str, Any] = {"kv_connector": self.kv_connector, "kv_role": "kv_producer"}
        if self.module_path:
            cfg["kv_connector_module_path"] = self.module_path
        cfg["kv_connector_extra_config"] = extra
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """For scenario.json and bundles: which connector ran, and what its output was expected to be."""
        d = asdict(self)
        if self.output is not None:
            d["output"]["tensors"] = list(self.output.tensors)
        return d


def _mooncake_defaults() -> dict[str, Any]:
    """hs-connectors' MooncakeStoreConfig defaults (a master on this host), spelled out for the record."""
    return {"mooncake": {"master_server_address": "127.0.0.1:50051", "metadata_server": "P2PHANDSHAKE",
                         "protocol": "tcp"}}


BUILTIN: dict[str, Connector] = {
    STOCK: Connector(STOCK, "ExampleHiddenStatesConnector", None, "vllm", Output(FILE), cpu=False,
                     note="vLLM's own; from 0.22 it copies on a CUDA stream into pinned memory (GPU only); "
                          "on vLLM 0.22-0.26 it needs --no-chunked-prefill"),
    CPU: Connector(CPU, "CpuHiddenStatesConnector", "repro.vllm_plugins.cpu_hs_connector", "repro", Output(FILE),
                   cpu=True, note="the stock connector, extracting and writing synchronously in the model step "
                                  "(what vLLM 0.20.2 does on a GPU)"),
    FP8: Connector(FP8, "FP8HiddenStatesConnector", "hs_connectors.fp8_hidden_states_connector", "hs-connectors",
                   Output(FILE, FP8_E4M3, FP8_TENSORS, PER_TOKEN_AMAX), cpu=False, requires=("hs_connectors",),
                   note="hs-connectors 0.9: the stock connector's async path, hidden_states quantized to "
                        "float8_e4m3fn with per-token scales (GPU only, like the stock one)"),
    CPU_FP8: Connector(CPU_FP8, "CpuFP8HiddenStatesConnector", "repro.vllm_plugins.cpu_fp8_hs_connector", "repro",
                       Output(FILE, FP8_E4M3, FP8_TENSORS, PER_TOKEN_AMAX), cpu=True, requires=("hs_connectors",),
                       note="the fp8 file format (hs-connectors' quantize_tensor_to_fp8) written by the cpu "
                            "connector; needs hs-connectors beside vLLM"),
    MOONCAKE: Connector(MOONCAKE, "MooncakeHiddenStatesConnector", "hs_connectors.mooncake_hidden_states_connector",
                        "hs-connectors", Output(HANDLE), cpu=False, extra_config=_mooncake_defaults(),
                        requires=("hs_connectors", "mooncake"),
                        note="hs-connectors 0.9: no file; the response's kv_transfer_params carries a handle to an "
                             "object in a Mooncake store (needs a Mooncake master and mooncake-transfer-engine)"),
}
NAMES = (AUTO, *BUILTIN)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_CLASS = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT})$")
CHOICES_HELP = ("auto (cpu without a GPU, else stock), stock, cpu, fp8, cpu-fp8, mooncake, "
                "or module:Class of any KV connector importable beside vLLM")


def resolve(name: str, gpu: bool) -> Connector:
    """``--connector`` text -> a Connector (``auto`` by ``gpu``); UsageError for text that names none."""
    text = (name or AUTO).strip()
    if text == AUTO:
        return BUILTIN[STOCK if gpu else CPU]
    if text in BUILTIN:
        return BUILTIN[text]
    m = _MODULE_CLASS.match(text)
    if m:
        for known in BUILTIN.values():  # one of ours spelled as module:Class: same expectations
            if (known.module_path, known.kv_connector) == (m.group(1), m.group(2)):
                return known
        return Connector(text, m.group(2), m.group(1), "user", None, cpu=True,
                         note="given as module:Class; its output is checked by what each file holds")
    if ":" in text:
        raise UsageError(f"--connector {text!r}: write a class as module:Class, e.g. my_pkg.connectors:MyConnector")
    raise UsageError(f"--connector {text!r}: unknown connector; use {CHOICES_HELP}")


def output_of(name: str | None) -> Output | None:
    """What a server's connector returns when the user said which one it runs (attach mode); None: not said."""
    if not name or name == AUTO:
        return None
    return resolve(name, gpu=False).output


# -- is the connector there, in vLLM's Python? -------------------------------------------------------------------
# Run with vLLM's interpreter: "find" only looks the packages up (no import: fast), "import" imports the module the
# way vLLM will and checks that the class derives from vLLM's KVConnectorBase_V1 (by name: no second vLLM import).
_PROBE = r"""
import importlib, importlib.util, json, sys
mode, mod, cls = sys.argv[1], sys.argv[2], sys.argv[3]
def out(**kw):
    print("REPRO-PROBE " + json.dumps(kw)); sys.exit(0)
if mode == "find":
    for pkg in sys.argv[4:]:
        if importlib.util.find_spec(pkg) is None:
            out(error="missing", detail=f"No module named {pkg!r}")
    out(ok=True)
try:
    found = importlib.util.find_spec(mod) is not None
except BaseException as exc:  # a parent package that does not import
    out(error="import", detail=f"{type(exc).__name__}: {exc}")
if not found:
    out(error="missing", detail=f"No module named {mod!r}")
try:
    m = importlib.import_module(mod)
except BaseException as exc:
    out(error="import", detail=f"{type(exc).__name__}: {exc}")
def is_connector(c):
    return isinstance(c, type) and any(k.__name__ in ("KVConnectorBase_V1", "KVConnectorBase")
                                       and k.__module__.startswith("vllm.") for k in c.__mro__)
c = getattr(m, cls, None)
if c is None:
    out(error="no-class", names=sorted(n for n, v in vars(m).items() if is_connector(v) and v.__module__ == m.__name__))
if not isinstance(c, type):
    out(error="not-a-class", detail=type(c).__name__)
out(ok=is_connector(c), mro=[f"{k.__module__}.{k.__qualname__}" for k in c.__mro__])
"""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    error: str | None = None  # missing | import | no-class | not-a-class | not-a-connector | probe-failed
    detail: str = ""
    mro: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


@functools.lru_cache(maxsize=64)
def _run_probe(python: str, args: tuple[str, ...], pythonpath: str, timeout: float) -> ProbeResult:
    import os

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        r = subprocess.run([python, "-c", _PROBE, *args], capture_output=True, text=True, timeout=timeout,
                           env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ProbeResult(False, "probe-failed", f"{type(exc).__name__}: {exc}")
    line = next((ln for ln in r.stdout.splitlines()[::-1] if ln.startswith("REPRO-PROBE ")), None)
    if line is None:
        tail = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return ProbeResult(False, "probe-failed", tail[:300])
    d = json.loads(line.split(" ", 1)[1])
    if "error" in d:
        return ProbeResult(False, d["error"], str(d.get("detail", "")), names=tuple(d.get("names") or ()))
    mro = tuple(d.get("mro") or ())
    if not d.get("ok"):
        return ProbeResult(False, "not-a-connector", "", mro)
    return ProbeResult(True, None, "", mro)


def probe(conn: Connector, python: str | None, pythonpath: str = "", timeout: float = 180.0) -> ProbeResult | None:
    """Check ``conn`` in vLLM's Python (same interpreter, same PYTHONPATH); None when there is nothing to check.

    vLLM's own connectors and repro's ``cpu`` ship with what is being launched; a known connector of another
    package needs that package installed (looked up, not imported); a ``module:Class`` of the user's is imported
    as vLLM will import it, and its class must be a vLLM KV connector."""
    if conn.module_path is None:
        return None
    if conn.source == "user":
        args: tuple[str, ...] = ("import", conn.module_path, conn.kv_connector)
    elif conn.requires:
        args = ("find", conn.module_path, conn.kv_connector, *conn.requires)
    else:
        return None
    return _run_probe(python or sys.executable, args, pythonpath, timeout)


def require(conn: Connector, python: str | None, pythonpath: str = "") -> ProbeResult | None:
    """:func:`probe`, raising a one-line UsageError (exit 2) that says what to do when the connector is not usable."""
    res = probe(conn, python, pythonpath)
    if res is None or res.ok:
        return res
    py = python or sys.executable
    where = f"in vLLM's Python ({py})"
    mod, cls = conn.module_path, conn.kv_connector
    flag = f"--connector {conn.name}"
    if res.error == "missing" and conn.source != "user":
        pkg = res.detail.split("'")[1] if "'" in res.detail else res.detail
        install = (HS_CONNECTORS_INSTALL if pkg == "hs_connectors" else
                   "pip install 'mooncake-transfer-engine>=0.3.12' into vLLM's environment and run a Mooncake master"
                   if pkg == "mooncake" else f"install {pkg} into vLLM's environment")
        raise UsageError(f"{flag}: {pkg} is not installed {where}", help=f"Install it: {install}.")
    if res.error in ("missing", "import"):
        raise UsageError(f"{flag}: module {mod} does not import {where}: {res.detail}",
                         help="Install it beside vLLM, or put its directory on PYTHONPATH: vLLM imports it in "
                              "EngineCore and in every Worker.")
    if res.error == "no-class":
        there = f" (connector classes there: {', '.join(res.names)})" if res.names else ""
        raise UsageError(f"{flag}: module {mod} has no class {cls}{there}")
    if res.error in ("not-a-class", "not-a-connector"):
        what = (f"it is a {res.detail}, not a class" if res.error == "not-a-class"
                else "the class does not derive from vLLM's KVConnectorBase_V1")
        raise UsageError(f"{flag}: {mod}.{cls} is not a vLLM KV connector ({what})",
                         help="Give the class vLLM should load as kv_connector, e.g. "
                              "hs_connectors.fp8_hidden_states_connector:FP8HiddenStatesConnector.")
    raise UsageError(f"{flag}: could not check the connector {where}: {res.detail}")
