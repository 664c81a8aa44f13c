"""What a stress run knows about its server: where its log and store are, its command line, its model's needs.

The server is launched by repro (its settings and command are known), attached on this machine
(read from /proc while it is alive: :func:`repro.server.attached.find_local_server`), or remote
(only the flags say anything: ``--log-file``, ``--server-command``, ``--storage-path``). Each
answer says where it came from, so a report can name the flag that would have told more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.scenario import Scenario, ServerRecord
from repro.server import connectors
from repro.server.attached import LocalServer
from repro.server.launcher import VllmServer

DEFAULT_VOCAB = 500  # safe for any model (the tiny one has 512) when the vocabulary size is unknown


def _vocab_from_dir(d: str | None) -> int | None:
    if not d:
        return None
    cfg = Path(d).expanduser() / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    v = data.get("vocab_size") or (data.get("text_config") or {}).get("vocab_size")
    return int(v) if isinstance(v, int) and v > 0 else None


class ServerFacts:
    def __init__(self, scn: Scenario, server: VllmServer | None, connector: connectors.Connector | None) -> None:
        self.scn, self.server, self.connector = scn, server, connector
        self.attached: LocalServer | None = None  # an attached server found on this machine (read while alive)

    def storage_path(self) -> str | None:
        if self.connector is not None and not self.connector.writes_files:
            return None
        if self.scn.storage_path:
            return self.scn.storage_path
        if self.server is not None and self.server.settings.extract:
            return self.server.settings.storage
        return None

    def server_record(self) -> ServerRecord:
        """What this run knows of its server, written beside the settings in scenario.json and bundles."""
        command, source = self.command()
        return ServerRecord(server_command=command, server_command_source=source, server_log=self.log_info(),
                            connector=(self.connector.to_dict() if self.connector is not None else
                                       {"name": None, "note": "attached without --connector: each answer is checked "
                                                              "by what it holds (a file's own dtype and scales, or "
                                                              "a handle)"}))

    def log_path(self) -> Path | None:
        """The server's log: the launched server's, --log-file, else the attached local server's stdout file."""
        if self.server is not None:
            return self.server.log_path
        if self.scn.log_file:
            return Path(self.scn.log_file)
        if self.attached is not None and self.attached.log_path and not self.scn.docker:
            return Path(self.attached.log_path)
        return None

    def log_info(self) -> dict[str, Any]:
        """Where the server's log came from, or why there is none and which flag would have captured it."""
        if self.server is not None:
            return {"path": str(self.server.log_path), "source": "launched by repro"}
        if self.scn.log_file:
            return {"path": self.scn.log_file, "source": "--log-file"}
        if self.scn.docker:
            return {"path": None, "source": f"docker logs {self.scn.docker}"}
        if self.attached is not None:
            return {"path": self.attached.log_path, "source": self.attached.log_note}
        return {"path": None, "source": "not captured: the server is not on this machine; pass --log-file FILE "
                                        "(a copy of its log) or run repro on the server's machine"}

    def command(self) -> tuple[list[str] | None, str | None]:
        """(the server's command line, where it came from): launched, /proc of the attached local server, or
        --server-command."""
        if self.server is not None:
            return self.server.command, "launched by repro"
        if self.attached is not None and self.attached.command:
            return self.attached.command, f"/proc/{self.attached.pid}/cmdline"
        if self.scn.server_cmdline:
            return self.scn.server_cmdline, "--server-command"
        return None, None

    def model_dtype(self) -> str | None:
        """The dtype the hidden states must be stored in, when the launched server's --dtype says it."""
        cmd = self.server.command if self.server is not None else []
        if "--dtype" not in cmd[:-1]:
            return None
        from repro.hsfiles.expect import dtype_code

        last = len(cmd) - 1 - cmd[::-1].index("--dtype")  # vLLM takes the last one (passthrough may repeat it)
        return dtype_code(cmd[last + 1]) if last + 1 < len(cmd) else None

    def vocab_size(self, model_root: str | None = None) -> int:
        """--vocab-size, else the launched model's config.json, else the served root's, else a safe default."""
        if self.scn.load.vocab_size:
            return self.scn.load.vocab_size
        if self.server is not None:
            from repro.server.launcher import resolve_model

            try:
                model_dir = resolve_model(self.server.settings.model)[0]
            except ReproError:
                model_dir = None
            v = _vocab_from_dir(model_dir)
            if v:
                return v
        v = _vocab_from_dir(model_root)
        return v or DEFAULT_VOCAB
