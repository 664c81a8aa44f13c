"""What the server saw of its clients: requests received and aborted, and the files aborted requests left behind.

A client's timeouts and retries are visible from the server's side when vLLM logs requests
(``--enable-log-requests``): every attempt is a ``Received request <id>`` line, every attempt the
client gave up on is an ``Aborted request(s) <id>`` line (the client disconnected; a retry is a new
id). The hidden-state store holds ``<id>.safetensors`` files nobody took: a file whose id the log
says was aborted is the orphan leak (the connector writes it after the abort, and no response
ever named it). ``context/clients.json`` puts the two side by side; without request
logging it says so instead of reporting zero aborts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from repro.formats import CLIENTS_FORMAT

CLIENTS_SCHEMA, CLIENTS_VERSION = CLIENTS_FORMAT.schema, CLIENTS_FORMAT.version
_RECEIVED = re.compile(r"Received request (\S+?):")
_ABORTED = re.compile(r"Aborted request\(s\) (\S+?)\.?$")
DATA_SUFFIX = ".safetensors"
MAX_NAMES = 20_000  # store entries looked at; names only, no stat


def _ids(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    received: list[str] = []
    aborted: list[str] = []
    for ln in lines:
        m = _RECEIVED.search(ln)
        if m:
            received.append(m.group(1))
            continue
        m = _ABORTED.search(ln.rstrip())
        if m:
            aborted.extend(x for x in m.group(1).split(",") if x)
    return received, aborted


def store_ids(path: str | None, limit: int = MAX_NAMES) -> tuple[set[str] | None, bool]:
    """Request ids of the data files in the store (None: no store, or not readable), and whether all were seen."""
    if not path:
        return None, True
    try:
        with os.scandir(path) as it:
            out: set[str] = set()
            for i, e in enumerate(it):
                if i >= limit:
                    return out, False
                if e.name.endswith(DATA_SUFFIX):
                    out.add(e.name[: -len(DATA_SUFFIX)])
            return out, True
    except OSError:
        return None, True


def view(log_text: str | None, store: str | None, transfer: str = "file") -> dict[str, Any]:
    """The clients as the server saw them: from its log (request logging on) and its hidden-state store."""
    d: dict[str, Any] = {"schema": CLIENTS_SCHEMA, "version": CLIENTS_VERSION}
    lines = (log_text or "").splitlines()
    received, aborted = _ids(lines)
    logged = bool(received) or bool(aborted)
    abort_set = set(aborted)
    if logged:
        d["requests"] = {"received": len(received), "aborted": len(abort_set), "aborted_sample": sorted(abort_set)[:20],
                         "source": "server log (--enable-log-requests): a client timeout or disconnect is an abort; "
                                   "a retry is a new request"}
    else:
        d["requests"] = None
        d["requests_note"] = ("the log shows no request lines: the server does not log requests, so aborted requests "
                              "(client timeouts) cannot be counted here; start vLLM with --enable-log-requests")
    if transfer != "file":
        d["store"] = None
        d["store_note"] = "the connector hands back handles into a Mooncake store: there is no file store to look at"
        return d
    ids, complete = store_ids(store)
    if ids is None:
        d["store"] = None
        d["store_note"] = "no hidden-state store known (--storage PATH)" if not store else f"{store} is not readable"
        return d
    left = ids & abort_set
    d["store"] = {"path": store, "data_files": len(ids), "complete": complete,
                  "of_aborted_requests": len(left) if logged else None,
                  "of_aborted_requests_sample": sorted(left)[:20],
                  "note": "files still in the store when the bundle was taken; one whose request the log shows "
                          "aborted was written after the client gave up and no response named it: an orphan "
                          "nothing will delete"}
    return d
