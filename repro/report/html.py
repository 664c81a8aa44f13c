"""A :class:`~repro.report.model.Report` as one self-contained HTML page.

Inline CSS, figures as base64 PNG data URIs, no script and nothing fetched: the page opens from a file, a mail
attachment or an air-gapped machine alike (its Content-Security-Policy forbids every network load).
"""

from __future__ import annotations

import base64
import html
import time

from repro import __version__
from repro.report.model import Facts, Figure, Paragraph, Report, Table

SCHEMA = "repro.report"
VERSION = 1

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2329;
background:#f6f7f9;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:18px 22px 40px}
h1{font-size:1.35rem;margin:0 0 4px}h2{font-size:1.1rem;margin:28px 0 8px;border-bottom:1px solid #d5d9de;
padding-bottom:4px}
.status{border-radius:8px;padding:14px 18px;margin:12px 0 6px;color:#fff;font-size:1.25rem;font-weight:600}
.status.clean{background:#1f7a3f}.status.stall{background:#b3261e}.status.warning{background:#a15c00}
.status.info{background:#44546a}
.notes{margin:6px 0 0;padding-left:20px}.notes li{margin:2px 0}
.src{color:#5b6670;font-size:.85rem;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:6px 0}
dt{font-weight:600;color:#39424b}dd{margin:0;word-break:break-word}
table{border-collapse:collapse;width:100%;font-size:.88rem;background:#fff;margin:6px 0}
th,td{border:1px solid #dde1e5;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#eef1f4}tr.hang td,tr.stall td{background:#fdecea}tr.clean td{background:#eaf6ee}
tr.restart td{background:#f1ebfa}tr.warning td{background:#fff4e0}
caption{caption-side:bottom;text-align:left;color:#5b6670;font-size:.82rem;padding-top:3px}
figure{margin:10px 0;background:#fff;border:1px solid #dde1e5;border-radius:6px;padding:8px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#5b6670;font-size:.85rem;margin-top:4px}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em;background:#eef1f4;padding:0 3px;
border-radius:3px}
footer{color:#7a848d;font-size:.8rem;margin-top:30px}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _block(b: object) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{_e(b.text)}</p>"
    if isinstance(b, Facts):
        return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b.rows) + "</dl>"
    if isinstance(b, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in b.headers)
        rows = []
        for i, r in enumerate(b.rows):
            cls = b.classes[i] if i < len(b.classes) and b.classes[i] else ""
            cells = "".join(f"<td>{_e(c)}</td>" for c in r)
            rows.append(f'<tr class="{_e(cls)}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
        cap = f"<caption>{_e(b.caption)}</caption>" if b.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        cap = f"<figcaption>{_e(b.caption)}</figcaption>" if b.caption else ""
        return f'<figure><img alt="{_e(b.title)}" src="data:image/png;base64,{data}">{cap}</figure>'
    raise TypeError(f"not a report block: {type(b).__name__}")


def render(report: Report) -> str:
    """The whole page as one string."""
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="repro {_e(__version__)}">',
        f'<meta name="repro-report" content="schema={SCHEMA}; version={VERSION}; kind={_e(report.kind)}">',
        f"<title>{_e(report.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{_e(report.title)}</h1>",
        f'<div class="src">{_e(report.source)}</div>',
        f'<div class="status {_e(report.status)}" id="status">{_e(report.headline)}</div>',
        f'<ul class="notes">{notes}</ul>' if notes else "",
    ]
    for s in report.sections:
        parts.append(f"<section><h2>{_e(s.title)}</h2>")
        parts.extend(_block(b) for b in s.blocks)
        parts.append("</section>")
    parts.append(f"<footer>repro {_e(__version__)} report ({SCHEMA} v{VERSION}), written "
                 f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</footer>")
    parts.append("</main></body></html>\n")
    return "\n".join(p for p in parts if p)
