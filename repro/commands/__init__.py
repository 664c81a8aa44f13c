"""One module per `repro` subcommand, each exposing a click command named `command`; the wiring of stages."""
