"""Which environment variables of the server a bundle shows: an allow-list, every other value withheld.

A maintainer needs the variables that change vLLM's behaviour; every other variable of a deployment
(webhooks, payment and cloud keys, registry and CI tokens under any name) is listed by name with its
value withheld. Kept by default:

* names starting with ``VLLM_``, ``CUDA``, ``NCCL``, ``TORCH``, ``PYTORCH``, ``OMP_``, ``HF_`` and the
  other prefixes vLLM's own ``collect_env`` reports (``CUBLAS``, ``CUDNN``, ``MKL_``, ``NVIDIA``, ``ZE_``,
  ``ONEAPI_``, ``SYCL_``, ``IGC_``, ``CCL_``, ``I_MPI_``, ``NEOReadDebugKeys``), and repro's own ``REPRO_``;
* ``PATH``, ``LD_LIBRARY_PATH`` and the non-``VLLM_`` names vLLM reads (``LOCAL_RANK``, ``MAX_JOBS``,
  ``CUDA_HOME``, ``S3_ENDPOINT_URL``, ...);
* the proxy variables (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, either case), with any
  ``user:password@`` removed;

never a name that says secret (``HF_TOKEN``, ``VLLM_API_KEY``: anything with token, secret, key,
password, auth, credential, cookie, session, and among the defaults also api and access, the words
vLLM's ``collect_env`` skips). ``--env-allow NAME`` (repeatable; shell-style wildcards:
``--env-allow 'MYAPP_*'``) or ``REPRO_ENV_ALLOW=NAME,NAME`` adds names. Kept values still pass the
secret scanner.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from repro.secrets.secretscan import WITHHELD, secret_name

ALLOW_PREFIXES = ("VLLM_", "CUDA", "NCCL", "TORCH", "PYTORCH", "OMP_", "HF_", "REPRO_",
                  # the rest of what vLLM's collect_env.get_env_vars() reports
                  "CUBLAS", "CUDNN", "MKL_", "NVIDIA", "ZE_", "ONEAPI_", "SYCL_", "NEOReadDebugKeys", "IGC_", "CCL_",
                  "I_MPI_")
ALLOW_NAMES = frozenset({"PATH", "LD_LIBRARY_PATH",
                         # the names vLLM reads (vllm/envs.py) that do not start with VLLM_
                         "MAX_JOBS", "NVCC_THREADS", "CMAKE_BUILD_TYPE", "VERBOSE", "CUDA_HOME", "LOCAL_RANK",
                         "CUDA_VISIBLE_DEVICES", "S3_ENDPOINT_URL", "NO_COLOR", "FORCE_COLOR",
                         "MOONCAKE_PREFERRED_SEGMENT", "MOONCAKE_REQUESTER_LOCAL_HOSTNAME"})
PROXY_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY"})
# vLLM's collect_env leaves out every name holding one of these (collect_env.get_env_vars).
COLLECT_ENV_SECRET_TERMS = ("secret", "token", "api", "access", "password")
ENV_ALLOW_VAR = "REPRO_ENV_ALLOW"

_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.\-]*://)[^/@\s]*@")


def split_allow(value: str | None) -> list[str]:
    """`REPRO_ENV_ALLOW` -> names: separated by commas, colons or white space."""
    return [n for n in re.split(r"[,:\s]+", value or "") if n]


@dataclass(frozen=True)
class EnvPolicy:
    """The allow-list: the defaults plus the names (or wildcard patterns) a user added."""

    extra: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, names: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> "EnvPolicy":
        env = os.environ if environ is None else environ
        return cls(tuple(dict.fromkeys([*names, *split_allow(env.get(ENV_ALLOW_VAR))])))

    def _extra(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.extra)

    def allowed(self, name: str) -> bool:
        """True when `name`'s value is shown (still scanned for secrets)."""
        if secret_name(name):
            return False
        if self._extra(name):
            return True
        if any(t in name.lower() for t in COLLECT_ENV_SECRET_TERMS):
            return False
        return name in ALLOW_NAMES or name.upper() in PROXY_NAMES or name.startswith(ALLOW_PREFIXES)

    def apply(self, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """(kept: name -> value, with proxy credentials removed; withheld: names), both sorted by name."""
        kept: dict[str, str] = {}
        withheld: list[str] = []
        for k in sorted(env):
            if not self.allowed(k):
                withheld.append(k)
                continue
            v = env[k]
            if k.upper() in PROXY_NAMES:
                v = ",".join(_USERINFO.sub(r"\1" + WITHHELD + "@", part) for part in v.split(","))
            kept[k] = v
        return kept, withheld

    def describe(self) -> dict[str, object]:
        """For server-env.json and the manifest: what the allow-list was."""
        return {"prefixes": list(ALLOW_PREFIXES), "names": sorted(ALLOW_NAMES | PROXY_NAMES),
                "added": list(self.extra), "never": "names that say secret (token, secret, key, password, auth, "
                                                     "credential, cookie, session; api, access unless added)"}
