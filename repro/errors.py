"""Errors that tell the user what to do next.

Every error the kit raises on purpose is a :class:`ReproError`. It carries a
one-line message, an optional multi-line ``help`` text with the next step, and
the process exit code the CLI uses for it. The CLI prints ``error: <message>``
(plus the help) and exits with that code; it never shows a traceback for these.
"""

from __future__ import annotations

# Exit codes shared by every command (documented in README and --help).
EXIT_OK = 0
EXIT_STALL = 1  # a stall reproduced / "bad" for git bisect run
EXIT_USAGE = 2
EXIT_TARGET = 3  # the target could not be started or reached
EXIT_FILES = 4  # the run finished, but hidden-state files failed their check or could not be verified
EXIT_SKIP = 125  # git bisect run: could not test
EXIT_INTERRUPTED = 130


class ReproError(Exception):
    """Base class: a failure with a message the user can act on."""

    exit_code = EXIT_USAGE
    help: str = ""

    def __init__(self, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if help is not None:
            self.help = help

    def __str__(self) -> str:
        return self.message


class UsageError(ReproError):
    """Bad input from the user: a flag, a file, a spec. Exit 2."""

    exit_code = EXIT_USAGE


class TargetError(ReproError):
    """The vLLM server could not be started, reached or stopped. Exit 3."""

    exit_code = EXIT_TARGET


class ServerStartError(TargetError):
    """vLLM exited or did not become ready; the message carries its log tail."""


PTRACE_HELP = """\
py-spy needs permission to read another process's memory (ptrace). Depending on
where repro runs:

* As a normal user on the host: the kernel setting kernel.yama.ptrace_scope is
  {scope}. With 1 only a parent may trace its child. Either run repro with sudo,
  or allow tracing for this boot:  sudo sysctl kernel.yama.ptrace_scope=0

* Inside Docker: ptrace is not allowed by default. Restart the container with
  --cap-add SYS_PTRACE (docker run ... --cap-add SYS_PTRACE ...), or in
  compose:  cap_add: [SYS_PTRACE]

* In Kubernetes: add SYS_PTRACE to securityContext.capabilities.add of the
  vLLM container.

The rest of the bundle (metrics, logs, environment, storage) was still written.
"""


class PtraceDenied(ReproError):
    """py-spy could not attach: the help explains ptrace_scope / SYS_PTRACE."""

    exit_code = EXIT_TARGET

    def __init__(self, message: str, scope: str | None = None) -> None:
        super().__init__(message, PTRACE_HELP.format(scope=scope if scope is not None else "unknown"))
