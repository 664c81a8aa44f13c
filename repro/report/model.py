"""What a report says, as data: the HTML writer renders it, the builders (one per kind of run) fill it.

A :class:`Report` is a status line at the top (clean / stall / warning / info), a few headline facts, and
sections of blocks (paragraphs, key-value facts, tables, figures). Nothing here reads files or draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

CLEAN, STALL, WARNING, INFO = "clean", "stall", "warning", "info"


@dataclass
class Paragraph:
    text: str


@dataclass
class Facts:
    """Key-value rows (a definition list)."""

    rows: list[tuple[str, str]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    classes: list[str] = field(default_factory=list)  # one CSS class per row ("" for none): hang / clean / restart


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""


Block = Union[Paragraph, Facts, Table, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block) -> "Section":
        self.blocks.append(block)
        return self


@dataclass
class Report:
    kind: str  # stress | watch | bisect | bundle
    title: str
    status: str  # CLEAN | STALL | WARNING | INFO
    headline: str  # the first thing a reader sees, e.g. "clean: 6.0 h at concurrency 32"
    source: str  # the run directory or bundle the report was made from
    notes: list[str] = field(default_factory=list)  # one line each, under the headline
    sections: list[Section] = field(default_factory=list)
    timeline_png: bytes | None = None  # written beside the HTML as timeline.png

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
