"""What a vLLM completion response says about its hidden states: the file path (or a store handle) and the ids."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResponseInfo:
    """What the event loop takes out of a response (cheap): the file to check and the prompt ids."""

    hs_path: str | None
    prompt_ids: list[int] | None
    prompt_tokens: int | None
    completion_tokens: int | None
    handle: str | None = None  # a key into a store (hs-connectors' Mooncake connector) instead of a file path
    kv: dict = field(default_factory=dict)  # the whole kv_transfer_params (a handle's manifest: tensors, metadata)


def read_response(data: dict) -> ResponseInfo:
    kv = data.get("kv_transfer_params") or {}
    if not isinstance(kv, dict):
        kv = {}
    hs = kv.get("hidden_states_path")
    handle = kv.get("handle") if hs is None else None
    ids = data.get("prompt_token_ids")
    if ids is None:
        choices = data.get("choices") or [{}]
        ids = choices[0].get("prompt_token_ids")
    usage = data.get("usage") or {}
    return ResponseInfo(hs, ids, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                        str(handle) if handle is not None else None, kv)
