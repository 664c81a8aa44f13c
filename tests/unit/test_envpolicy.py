"""The server environment by allow-list: what a maintainer needs is shown, every other value withheld."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from repro.secrets.envpolicy import ENV_ALLOW_VAR, EnvPolicy, split_allow
from tests.conftest import import_vllm


@pytest.mark.parametrize("name", ["VLLM_LOGGING_LEVEL", "VLLM_CPU_OMP_THREADS_BIND", "CUDA_VISIBLE_DEVICES",
                                  "CUDA_HOME", "NCCL_DEBUG", "TORCH_CUDA_ARCH_LIST", "PYTORCH_CUDA_ALLOC_CONF",
                                  "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME", "LD_LIBRARY_PATH", "PATH",
                                  "HTTPS_PROXY", "no_proxy", "LOCAL_RANK", "MKL_NUM_THREADS", "REPRO_INJECT"])
def test_settings_that_change_vllm_are_kept(name: str) -> None:
    assert EnvPolicy().allowed(name)


@pytest.mark.parametrize("name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "REPRO_API_KEY",
                                  "NCCL_SECRET", "CUDA_ACCESS_LIST", "HF_API_URL", "ALERTS_WEBHOOK", "STRIPE",
                                  "NPM_CONFIG_USERCONFIG", "CI_JOB_JWT", "HOME", "HOSTNAME", "PYTHONPATH", "AWS_REGION"])
def test_every_other_variable_is_withheld(name: str) -> None:
    """Secret names never; names off the allow-list are listed by name only (HF_TOKEN is not an HF_ setting)."""
    assert not EnvPolicy().allowed(name)


def test_a_variable_is_added_by_flag_or_by_REPRO_ENV_ALLOW_with_wildcards() -> None:
    """GIVEN --env-allow names and REPRO_ENV_ALLOW WHEN the policy is built THEN both add names (wildcards work),
    and a name that says secret is still withheld."""
    with mock.patch.dict(os.environ, {ENV_ALLOW_VAR: "PYTHONPATH, MYAPP_*"}):
        p = EnvPolicy.from_settings(["AWS_REGION", "MY_TOKEN"])
    assert p.allowed("AWS_REGION") and p.allowed("PYTHONPATH") and p.allowed("MYAPP_MODE")
    assert not p.allowed("MY_TOKEN") and not p.allowed("MYAPP_PASSWORD") and not p.allowed("HOME")
    assert split_allow("A,B:C D") == ["A", "B", "C", "D"]


def test_apply_splits_kept_and_withheld_and_strips_proxy_credentials() -> None:
    kept, withheld = EnvPolicy().apply({"HOME": "/root", "HTTP_PROXY": "http://u:p@proxy:3128,http://p2:80",
                                        "VLLM_X": "1"})
    assert kept == {"HTTP_PROXY": "http://[WITHHELD]@proxy:3128,http://p2:80", "VLLM_X": "1"}
    assert withheld == ["HOME"]


def test_everything_vllm_collect_env_prints_is_on_the_allow_list() -> None:
    """GIVEN the installed vLLM's collect_env WHEN it lists the environment THEN every variable it prints is on
    the default allow-list (the allow-list is at least what vLLM's own bug template asks for)."""
    collect_env = import_vllm("vllm.collect_env")
    envs = import_vllm("vllm.envs")
    names = list(envs.environment_variables) + [p + "SOMETHING" for p in (
        "TORCH", "NCCL", "PYTORCH", "CUDA", "CUBLAS", "CUDNN", "OMP_", "MKL_", "NVIDIA", "ZE_", "ONEAPI_", "SYCL_",
        "NEOReadDebugKeys", "IGC_", "CCL_", "I_MPI_", "UNRELATED_")]
    with mock.patch.dict(os.environ, {n: "v" for n in names}, clear=True):
        printed = [ln.split("=", 1)[0] for ln in collect_env.get_env_vars().splitlines() if ln]
    assert printed and "UNRELATED_SOMETHING" not in printed
    assert [n for n in printed if not EnvPolicy().allowed(n)] == []
