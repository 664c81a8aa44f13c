"""Each setting declared once: its flag, help, parser and range sit next to the dataclass field it fills.

A settings dataclass declares a field with :func:`setting`; the commands build their click options from
those declarations (:func:`option`, :func:`options`) and read the values back through them
(:func:`values`), so one knob has one flag name, one parser and one help text in every command.
Old spellings of a flag stay accepted as hidden aliases. Ranges are checked by the settings class's
``validate()`` (:func:`check_ranges`), never a second time in a command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any

import click

from repro.errors import UsageError
from repro.units import parse_duration, parse_size


@dataclass(frozen=True)
class Flag:
    """How one setting is given on the command line."""

    name: str  # the documented spelling, e.g. "--window"
    help: str
    # value (click's `type`) | duration ("90s", "5m") | size ("20MB") | words (shlex) | span ("N" or "LO-HI") | flag
    parse: str = "value"
    type: Any = None  # click type of a `value` (int, float, click.Choice(...)); None: text
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # older spellings: accepted, hidden from --help
    short: str | None = None  # e.g. "-c"
    off: str | None = None  # "--no-x" of an on/off flag (parse="flag"); None with parse="flag": a plain switch
    envvar: tuple[str, ...] = ()  # read in this order when the flag is not given
    multiple: bool = False
    minimum: float | None = None  # the range validate() checks (check_ranges)
    maximum: float | None = None
    positive: bool = False  # > 0 (minimum is >=)
    callback: Callable[..., Any] | None = None  # click callback (checks that need the raw text)


def setting(default: Any = MISSING, *, factory: Any = MISSING, flag: Flag | None = None, repr: bool = True) -> Any:
    """A dataclass field with its command-line declaration in the field's metadata."""
    meta = {"flag": flag} if flag is not None else {}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta, repr=repr)
    return field(default=default, metadata=meta, repr=repr)


def declared(cls: type, name: str) -> tuple[dataclasses.Field[Any], Flag]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            flag = f.metadata.get("flag")
            if flag is None:
                raise KeyError(f"{cls.__name__}.{name} declares no flag")
            return f, flag
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def flag_names(cls: type) -> list[str]:
    """The fields of `cls` that declare a flag, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("flag") is not None]


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def duration_text(seconds: float) -> str:
    """180.0 -> '3m', 30.0 -> '30s', 5400 -> '90m', 7200 -> '2h', 0.5 -> '0.5s' (how --help shows a default)."""
    s = float(seconds)
    if s and s % 3600 == 0:
        return f"{s / 3600:g}h"
    if s and s % 60 == 0:
        return f"{s / 60:g}m"
    return f"{s:g}s"


def size_text(n: int) -> str:
    """20_000_000 -> '20MB', 10**9 -> '1GB', 0 -> '0'."""
    for unit, mult in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


class AliasedOption(click.Option):
    """A click option whose older spellings are accepted but not shown in --help."""

    def __init__(self, *args: Any, hidden_aliases: Iterable[str] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def option(cls: type, name: str, *, default: Any = MISSING, dest: str | None = None, help: str | None = None,
           type: Any = None, callback: Callable[..., Any] | None = None
           ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of field `name` of `cls`, as declared; `default` overrides the field's default for one
    command (in the field's own unit: seconds, bytes), `help` its help text and `type` its choices where one
    command offers fewer; `dest` names the keyword the command receives; `callback` checks the raw text (a
    check that needs imports the settings module must not make, e.g. of the fault grammar)."""
    f, flag = declared(cls, name)
    value = _default_of(f) if default is MISSING else default
    names = [n for n in (flag.short, flag.name) if n] + list(flag.aliases)
    if flag.parse == "flag" and flag.off:
        decl = [f"{flag.name}/{flag.off}"] + list(flag.aliases)
        names = decl if not flag.short else [flag.short, *decl]
    kw: dict[str, Any] = {"help": help or flag.help, "metavar": flag.metavar, "multiple": flag.multiple,
                          "callback": callback or flag.callback, "hidden_aliases": flag.aliases, "cls": AliasedOption}
    if flag.envvar:
        kw["envvar"] = list(flag.envvar)
        kw["show_envvar"] = True
    if flag.parse == "flag":
        kw["is_flag"] = True
        kw["default"] = value if value is None else bool(value)  # None: neither given (the server's own default)
        kw["show_default"] = bool(flag.off)
    elif flag.parse == "duration":
        kw["default"] = None if value is None else duration_text(value)
        kw["metavar"] = flag.metavar or "DUR"
    elif flag.parse == "size":
        kw["default"] = None if value is None else size_text(int(value))
        kw["metavar"] = flag.metavar or "SIZE"
    elif flag.parse == "words":
        kw["default"] = None if value is None else " ".join(value)
    elif flag.parse == "span":
        kw["default"] = None if value is None else (f"{value[0]}" if value[0] == value[1] else f"{value[0]}-{value[1]}")
        kw["metavar"] = flag.metavar or "N|LO-HI"
    else:
        kw["type"] = type or flag.type
        kw["default"] = tuple(value) if flag.multiple else value
    if "show_default" not in kw:
        kw["show_default"] = not (value is None or flag.envvar or (flag.multiple and not value))
    return click.option(*names, dest or name, **kw)


def options(cls: type, names: Iterable[str] | None = None, defaults: dict[str, Any] | None = None,
            callbacks: dict[str, Callable[..., Any]] | None = None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every declared option of `cls` (or those named), in declaration order, with per-command defaults."""
    chosen = list(names) if names is not None else flag_names(cls)
    defaults, callbacks = defaults or {}, callbacks or {}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(chosen):
            fn = option(cls, name, default=defaults.get(name, MISSING), callback=callbacks.get(name))(fn)
        return fn

    return decorate


def parse(cls: type, name: str, raw: Any) -> Any:
    """The value of field `name` from what click handed the command (durations and sizes parsed)."""
    _, flag = declared(cls, name)
    if raw is None:
        return None
    if flag.parse == "duration":
        return parse_duration(raw, flag.name)
    if flag.parse == "size":
        return parse_size(raw, flag.name)
    if flag.parse == "words":
        import shlex

        return shlex.split(raw) if raw else None
    if flag.parse == "span":
        return parse_span(raw, flag.name)
    if flag.multiple:
        return tuple(raw)
    return raw


def parse_span(text: str, what: str) -> tuple[int, int]:
    """'128-2048' -> (128, 2048); '64' -> (64, 64)."""
    try:
        lo, sep, hi = str(text).partition("-")
        span = (int(lo), int(hi if sep else lo))
    except ValueError:
        raise UsageError(f"{what} {text!r}: use N or LO-HI, e.g. 128-2048") from None
    return span


def values(cls: type, kw: dict[str, Any], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Pop the declared options of `cls` (or those named) out of a command's keywords, parsed: the keyword
    arguments for `cls(...)`. An option the command does not offer is left to the field's default."""
    chosen = list(names) if names is not None else flag_names(cls)
    return {n: parse(cls, n, kw.pop(n)) for n in chosen if n in kw}


def check_ranges(obj: Any) -> None:
    """The declared ranges of a settings object: one UsageError naming the flag (validate() calls this)."""
    for f in dataclasses.fields(obj):
        flag = f.metadata.get("flag")
        if flag is None:
            continue
        v = getattr(obj, f.name)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if flag.positive and v <= 0:
            raise UsageError(f"{flag.name} must be positive, got {v:g}")
        if flag.minimum == 0 and v < 0:
            raise UsageError(f"{flag.name} must not be negative, got {v:g}")
        if flag.minimum is not None and v < flag.minimum:
            raise UsageError(f"{flag.name} must be at least {flag.minimum:g}, got {v:g}")
        if flag.maximum is not None and v > flag.maximum:
            raise UsageError(f"{flag.name} must be at most {flag.maximum:g}, got {v:g}")
