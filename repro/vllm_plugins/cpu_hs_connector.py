"""A CPU-capable hidden-states connector: vLLM's ExampleHiddenStatesConnector, written synchronously.

vLLM's own connector (0.22+) copies on a CUDA stream with ``pin_memory=True``
and kills the engine on a CPU-only build. This subclass extracts the hidden
states from the KV cache and writes the safetensors file synchronously inside
the model step -- exactly what vLLM 0.20.2 does on a GPU, which is why slow or
hung storage stalls the whole engine there. It keeps the ``.lock`` protocol.

Loaded by vLLM through ``kv_connector_module_path`` =
``repro.vllm_plugins.cpu_hs_connector`` and ``kv_connector`` =
``CpuHiddenStatesConnector``; ``repro serve`` sets both on machines without a GPU.
"""

from __future__ import annotations

import fcntl
import os

import torch
from safetensors.torch import save_file  # noqa: F401  (the fault plugin may wrap this name)

from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    extract_from_kv_cache,
)


class _DoneEvent:
    """Stands in for a CUDA event: the write already happened."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


class CpuHiddenStatesConnector(ExampleHiddenStatesConnector):
    @staticmethod
    def _tensors_to_write(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What goes into the file (a subclass may change the encoding, e.g. FP8 with scales)."""
        return tensors

    def _submit_async_write(self, pending) -> None:  # type: ignore[no-untyped-def]
        if not self._is_tp_rank_zero:
            return
        assert self._kv_cache is not None
        block_ids = torch.tensor(pending.block_ids, dtype=torch.long)
        bs = self._block_size
        slot_mapping = (torch.arange(bs, dtype=torch.long).reshape(1, bs) + block_ids.reshape(-1, 1) * bs).flatten()
        num_tokens = pending.token_ids.shape[0]
        hidden = extract_from_kv_cache(self._kv_cache, slot_mapping, num_tokens).clone()
        tensors = self._tensors_to_write({"hidden_states": hidden.contiguous(), "token_ids": pending.token_ids.clone()})
        os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
        lock_fd = self._lock_fds.pop(pending.req_id, None)
        if lock_fd is None and self.use_lock:
            lock_fd = os.open(pending.filename + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            # looked up at call time so that the fault plugin's wrapper applies
            import safetensors.torch as st

            st.save_file(tensors, pending.filename)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        self._req_copy_events[pending.req_id] = _DoneEvent()
