"""repro: reproduce, capture and shrink engine stalls in vLLM."""

__version__ = "0.1.0"
