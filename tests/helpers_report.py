"""Opening reports the way a person would: Chromium headless (Debian's package), a screenshot, and the
browser's console; plus pixel statistics that tell a drawn plot from a blank or broken image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
# matplotlib's first default colours (tab:blue, tab:orange, tab:green): the page's CSS uses none of them
PLOT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))


def chromium() -> str:
    """The browser, or a skip (a failure with REPRO_REQUIRE_BROWSER=1, which .ci/run sets)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("REPRO_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is not installed but REPRO_REQUIRE_BROWSER=1 (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); REPRO_REQUIRE_BROWSER=1 fails instead")


def open_in_browser(html: Path, shot: Path, profile: Path, size: tuple[int, int] = (1280, 2600)) -> list[str]:
    """Load ``html`` from file:// in headless Chromium, screenshot it into ``shot``; return the console messages
    (script errors, blocked loads, CSP violations: a page without script should have none)."""
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
           f"--window-size={size[0]},{size[1]}", html.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.is_file(), f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ":CONSOLE" in ln]


def png_stats(path: Path) -> dict[str, float]:
    """Size, distinct colours, the share of pixels that are not (near) white or the page's background, and the
    share near matplotlib's line colours."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]

    def near(c: tuple[int, int, int], tol: int) -> "np.ndarray":
        return (np.abs(r - c[0]) <= tol) & (np.abs(g - c[1]) <= tol) & (np.abs(b - c[2]) <= tol)

    background = near((255, 255, 255), 6) | near((246, 247, 249), 6)
    plot = np.zeros(r.shape, dtype=bool)
    for c in PLOT_COLOURS:
        plot |= near(c, 24)
    packed = ((r.astype(np.int32) << 16) | (g.astype(np.int32) << 8) | b).ravel()
    colours = int(np.count_nonzero(np.bincount(packed, minlength=1 << 24)))
    return {"width": a.shape[1], "height": a.shape[0], "colours": colours,
            "ink": float((~background).mean()), "plot_px": int(plot.sum())}


def assert_drawn(path: Path, min_plot_px: int = 50) -> dict[str, float]:
    """A PNG that shows plots: not blank, many colours, and pixels in matplotlib's line colours."""
    st = png_stats(path)
    assert st["width"] >= 300 and st["height"] >= 200, st
    assert st["colours"] >= 40, f"{path}: too few colours for a plot: {st}"
    assert st["ink"] >= 0.02, f"{path}: nearly blank: {st}"
    assert st["plot_px"] >= min_plot_px, f"{path}: no plotted lines in matplotlib's colours: {st}"
    return st


BISECT_MODEL = """
[space]
concurrency = [1, 32]
changes = ["extract=4", "storage=/data/local/hs,/mnt/nfs/hs", "timeout=120"]
[hazard]
mean_time_to_hang = "1h"
requires = ["storage"]
threshold = 8
[sim]
seed = 3
"""


def simulated_bisect(where: Path) -> Path:
    """A finished `repro bisect --simulate` run directory (journal.jsonl, minimal.json, ...), made in-process."""
    import contextlib
    import io

    from repro.cli import cli

    model = where / "model.toml"
    model.write_text(BISECT_MODEL)
    run = where / "bisect-run"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        rv = cli.main(args=["bisect", "--simulate", str(model), "--out", str(run)], standalone_mode=False)
    assert rv == 0 and (run / "journal.jsonl").is_file()
    return run


def figures_of(html: str, where: Path) -> list[Path]:
    """The page's embedded PNG figures, written out as files."""
    import base64
    import re

    out = []
    for i, b64 in enumerate(re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)):
        p = where / f"figure-{i}.png"
        p.write_bytes(base64.b64decode(b64))
        out.append(p)
    return out


def assert_page_shows_its_plots(html_path: Path, timeline: Path | None, tmp: Path) -> None:
    """The report page opens in Chromium without a console message, its screenshot shows the embedded plots
    (their line colours are on screen), and timeline.png is a drawn plot."""
    html = html_path.read_text()
    figures = figures_of(html, tmp)
    assert figures, "the page embeds no figure"
    assert timeline is not None and timeline.is_file()
    assert_drawn(timeline)
    expected = sum(assert_drawn(f)["plot_px"] for f in figures)
    shot = tmp / "shot.png"
    console = open_in_browser(html_path, shot, tmp / "chromium-profile")
    assert console == [], console
    st = png_stats(shot)
    assert st["plot_px"] >= 0.8 * expected, (st, expected)
    assert st["colours"] >= 100 and st["ink"] >= 0.05, st
