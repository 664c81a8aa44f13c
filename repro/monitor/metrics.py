"""vLLM's Prometheus /metrics: parse the few series the detector needs.

Parsed with prometheus_client's text parser. Every value is the sum over all
label sets (``model_name``, ``engine``, ``finished_reason``), so data-parallel
engines and several served names add up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

# family name as the parser reports it (counters lose their `_total`) -> field
_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
}
_COUNTERS = {
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
    "vllm:request_success": "request_success",
    "vllm:num_preemptions": "preemptions",
}


@dataclass(frozen=True)
class MetricsSample:
    """One scrape of /metrics (None: the series was absent)."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # 0..1
    prompt_tokens: float | None = None  # counters, cumulative
    generation_tokens: float | None = None
    request_success: float | None = None
    preemptions: float | None = None

    @property
    def tokens(self) -> float | None:
        """prompt + generation tokens (the progress counter); None when neither is exported."""
        if self.prompt_tokens is None and self.generation_tokens is None:
            return None
        return (self.prompt_tokens or 0.0) + (self.generation_tokens or 0.0)

    @property
    def in_server(self) -> float | None:
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0.0) + (self.waiting or 0.0)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


class MetricsParseError(ValueError):
    """The /metrics body is not Prometheus text."""


def parse_metrics(text: str) -> MetricsSample:
    """Parse a /metrics body; raise MetricsParseError when it is not Prometheus text."""
    values: dict[str, float] = {}
    try:
        for fam in text_string_to_metric_families(text):
            name = fam.name
            if name.endswith("_total"):  # some parser versions keep the suffix on untyped series
                name = name[: -len("_total")]
            field = _GAUGES.get(name) or _COUNTERS.get(name)
            if field is None:
                continue
            for s in fam.samples:
                if s.name.endswith(("_created", "_bucket", "_count", "_sum")):
                    continue
                values[field] = values.get(field, 0.0) + float(s.value)
    except (ValueError, TypeError, IndexError) as exc:
        raise MetricsParseError(f"not Prometheus text: {exc}") from None
    return MetricsSample(**values)
