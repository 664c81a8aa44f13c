"""One module per `repro` subcommand; each exposes a click command named `command`."""
