"""The `repro` command: a thin click group. Each subcommand lives in repro/commands/<name>.py."""

from __future__ import annotations

import sys

import click

from repro import __version__
from repro.commands import (analyze, bisect, capture, health, issue, known, report, scrub, serve, stress, trial,
                            watch)
from repro.errors import EXIT_INTERRUPTED, ReproError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="repro")
def cli() -> None:
    """Reproduce, capture and shrink engine stalls in vLLM.

    \b
    serve    launch a real vLLM server with hidden-state extraction (and optional fault injection)
    stress   sustained concurrent load with stall detection that does not trust health checks
    capture  take the evidence of a stall: py-spy stacks of every vLLM process, metrics, logs, env
    watch    production watchdog: detect a stall, capture first, then restart
    bisect   shrink a rare hang to a small reproducer, with statistics for rare events
    trial    one stress run for `git bisect run` (exit 0 good, 1 stall, 125 skip)
    analyze  verdict and signature of trace bundles, and the known upstream hang they look like
    issue    render ISSUE.md from a bundle, ready for vLLM's bug tracker
    known    the catalogue of known vLLM hangs; why a bundle matches one
    report   an HTML page and timeline.png for any run directory or bundle
    scrub    check a bundle, tarball or directory for secrets before uploading it (--fix: a redacted copy)
    health   repro watch's view of the engine (exit 0 serving, 1 not): a HEALTHCHECK for containers

    \b
    Exit codes: 0 ok / no stall, 1 stall reproduced, 2 usage error,
    3 target could not be started or reached, 125 could not test, 130 interrupted.
    """


# In the order of the pipeline (and of the help text above).
for _module, _name in ((serve, "serve"), (stress, "stress"), (capture, "capture"), (watch, "watch"),
                       (bisect, "bisect"), (trial, "trial"), (analyze, "analyze"), (issue, "issue"), (known, "known"),
                       (report, "report"), (scrub, "scrub"), (health, "health")):
    cli.add_command(_module.command, _name)


def main(argv: list[str] | None = None) -> None:
    from repro import invocation

    invocation.record(argv)
    try:
        rv = cli.main(args=argv, prog_name="repro", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ReproError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.help:
            click.echo("\n" + exc.help.rstrip(), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
