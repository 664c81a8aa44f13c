"""JSON on the request path: msgspec when it is importable (vLLM depends on it), else the standard library.

At concurrency 256 the stress client parses every answer, serialises every request body and writes every
record on its one event loop (or, for bodies, the prompt thread, which holds the same GIL); msgspec does
each in a fifth of the time of :mod:`json`. Without msgspec the module falls back to :mod:`json`, and what
it returns is the same data either way:

* :func:`loads` -- an answer's bytes to Python objects. Input msgspec refuses (malformed JSON, but also
  ``NaN``, a number out of float range, a lone surrogate escape, a UTF-8 BOM, UTF-16) is parsed again by
  ``json.loads``, so such an answer gets exactly the standard library's result or its error
  (``json.JSONDecodeError``, ``UnicodeDecodeError``: both ``ValueError``), message included.
* :func:`dumps` -- compact JSON (``separators=(",", ":")``, ``ensure_ascii=False``) as bytes. Byte for byte
  what ``json.dumps`` writes for strings, ints, bools, None, lists and dicts (request bodies: token ids,
  text, chat messages); a float may be spelled differently (msgspec writes ``1e-5`` as ``0.00001`` and
  ``1e+16`` as ``1e16``) and parses back to the same value. Non-finite floats are refused by neither:
  ``json`` writes ``NaN``, msgspec ``null``; repro's records hold measured seconds and counts only.
* :func:`dumps_str` -- the same as a ``str`` (one line of ``requests.jsonl``).

``BACKEND`` says which is in use (``"msgspec"`` or ``"json"``).
"""

from __future__ import annotations

import json
from typing import Any

try:
    import msgspec
except ImportError:  # repro runs without vLLM (attached to a remote server): the standard library
    msgspec = None  # type: ignore[assignment]

BACKEND = "json" if msgspec is None else "msgspec"


def _json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


if msgspec is not None:
    _decode = msgspec.json.Decoder().decode
    _encode = msgspec.json.Encoder().encode
    _DecodeError = msgspec.DecodeError

    def loads(data: bytes | str) -> Any:
        """Parse one JSON document (an answer's body)."""
        try:
            return _decode(data)
        except _DecodeError:  # what msgspec refuses: the standard library's result or error, message and all
            return json.loads(data)

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes (``json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()``)."""
        return _encode(obj)

    def dumps_str(obj: Any) -> str:
        """Compact JSON as a str (one record line)."""
        return _encode(obj).decode()

else:
    loads = json.loads  # type: ignore[assignment]

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes (``json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()``)."""
        return _json_dumps(obj).encode()

    dumps_str = _json_dumps  # type: ignore[assignment]
