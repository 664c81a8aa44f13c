"""hs-connectors' FP8 hidden-states file format, written by repro's synchronous CPU connector.

``hs_connectors.fp8_hidden_states_connector.FP8HiddenStatesConnector`` subclasses vLLM's
``ExampleHiddenStatesConnector`` and overrides only the thread-pool write step; the inherited
part copies on a CUDA stream into pinned memory, so it kills the engine on a CPU build of
vLLM. This connector is :class:`~repro.vllm_plugins.cpu_hs_connector.CpuHiddenStatesConnector`
(extract and write synchronously inside the model step) with the FP8 connector's encoding,
made by hs-connectors' own function: ``quantize_tensor_to_fp8`` (per-token scale =
amax / 448, clamped at 1e-12) gives ``hidden_states`` as ``float8_e4m3fn`` and
``hidden_states_scales`` float32 ``[T, 1, 1]`` beside ``token_ids`` -- the same tensors and
dtypes as the GPU connector writes.

Loaded by vLLM through ``kv_connector_module_path`` = ``repro.vllm_plugins.cpu_fp8_hs_connector``
and ``kv_connector`` = ``CpuFP8HiddenStatesConnector`` (``--connector cpu-fp8``). Needs
hs-connectors installed beside vLLM.
"""

from __future__ import annotations

import torch
from hs_connectors.fp8_utils import SCALES_KEY, quantize_tensor_to_fp8

from repro.vllm_plugins.cpu_hs_connector import CpuHiddenStatesConnector


class CpuFP8HiddenStatesConnector(CpuHiddenStatesConnector):
    @staticmethod
    def _tensors_to_write(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # the same dictionary FP8HiddenStatesConnector._write_tensors builds before save_file
        fp8_hs, scales = quantize_tensor_to_fp8(tensors["hidden_states"])
        return {**tensors, "hidden_states": fp8_hs, SCALES_KEY: scales}
