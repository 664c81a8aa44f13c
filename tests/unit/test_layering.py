"""The package layout tells the pipeline: every import points down the layers, none back up or sideways.

A module may import its own package and any package of a lower layer; never one of a higher layer, nor a
sibling of its own layer (siblings are independent stages). Imports inside functions count as much as
those at the top. README's Layout section names every package and module that is in the tree (and
nothing that is not), and each package's docstring says its one job.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "repro"

# Top first. Each entry is a package (repro/<name>/) or a top-level module (repro/<name>.py).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("commands",),  # one module per subcommand: the only place that wires stages together
    ("report", "executors"),  # `repro report` reads every run's outputs; executors run trials and replicas
    ("bisect", "load", "watch"),  # the three front ends: search, stress, watchdog
    ("capture",),  # takes the evidence a front end asks for, then has it analysed
    ("analyze",),  # reads a bundle; never the live process
    ("bundle",),  # the bundle format capture writes and analyze reads
    ("monitor",),  # observing a server: /metrics and logs into observations, the stall detector
    ("hsfiles", "storage"),  # what a run's requests leave behind: hidden-state files, the store
    ("server", "invocation"),  # the vLLM server; the recorded command line
    ("secrets", "vllm_plugins"),  # what never leaves the machine; what runs inside vLLM's processes
    ("scenario",),  # the settings of a run, typed, that travel through every stage
    ("options",),  # each setting's flag, parser and range, declared once beside its field
    ("formats", "rundir", "units"),  # file versions, run directories, human units
    ("errors",),
)
DATA_DIRS = {"known", "templates", "__pycache__"}  # package data, not code


def layer_of() -> dict[str, int]:
    return {name: i for i, names in enumerate(LAYERS) for name in names}


def top_units(pkg: Path = PKG) -> set[str]:
    """Every package and top-level module of repro (the units the layers order)."""
    units = {p.name for p in pkg.iterdir() if p.is_dir() and p.name not in DATA_DIRS}
    units |= {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    return units


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "repro" and len(parts) > 1 else None


def repro_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import of a repro module in the file, at any depth (relative ones resolved)."""
    here = list(path.relative_to(root).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if mod == "repro"]
    return [(ln, m) for ln, m in out if m == "repro" or m.startswith("repro.")]


def violations(pkg: Path = PKG) -> list[str]:
    rank = layer_of()
    root = pkg.parent
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        src = unit_of(".".join(path.relative_to(root).with_suffix("").parts))
        if src is None:
            continue
        for line, mod in repro_imports(path, root):
            dst = unit_of(mod)
            if dst is None or dst == src or dst == "__version__" or dst not in rank:
                continue
            where = f"{path.relative_to(root)}:{line} imports {mod}"
            if rank[dst] < rank[src]:
                bad.append(f"{where}: {dst} is a higher layer than {src}")
            elif rank[dst] == rank[src]:
                bad.append(f"{where}: {dst} and {src} are siblings of one layer")
    return bad


def test_every_package_and_module_has_a_layer() -> None:
    """A new package or top-level module must be placed in LAYERS (and so in the pipeline) before it is used."""
    missing = sorted(top_units() - set(layer_of()))
    assert not missing, f"add these to LAYERS in {Path(__file__).name}: {missing}"
    stale = sorted(set(layer_of()) - top_units())
    assert not stale, f"LAYERS names what is not in repro/: {stale}"


def test_no_import_points_up_or_sideways() -> None:
    """Capture does not import analyze's callers, analyze does not import capture, watch does not import the
    load generator, the server does not import capture, and so on for every pair: one list of every arrow
    that breaks the layers."""
    assert violations() == []


def test_the_checker_finds_an_arrow_back_up_or_sideways(tmp_path: Path) -> None:
    """The check is real: in a small tree, analyze importing capture (inside a function) and watch importing the
    load generator (a sibling) are both reported; capture importing analyze is not."""
    pkg = tmp_path / "repro"
    for name, text in {"analyze/probe.py": "def f():\n    from repro.capture.run import capture\n",
                       "watch/observe.py": "from repro.load import workloads\n",
                       "capture/run.py": "from repro.analyze import stacks\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text, encoding="utf-8")
    assert violations(pkg) == [
        "repro/analyze/probe.py:2 imports repro.capture.run: capture is a higher layer than analyze",
        "repro/watch/observe.py:1 imports repro.load: load and watch are siblings of one layer"]


def layout_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README.md has no '## Layout' section"
    return m.group(1)


def test_readme_layout_matches_the_tree() -> None:
    """Every package (repro/<name>/) and top-level module (repro/<name>.py) is in README's Layout section, and
    every repro/ path the section names exists."""
    section = layout_section()
    named = set(re.findall(r"^(repro/[\w/.<>]+)", section, re.M))
    for p in sorted(PKG.iterdir()):
        if p.name.startswith(("_", ".")) or p.name in {"py.typed", "__pycache__"}:
            continue
        want = f"repro/{p.name}/" if p.is_dir() else f"repro/{p.name}"
        assert want in named, f"README.md's Layout section does not name {want}"
    for entry in sorted(named):
        if "<" in entry:
            continue
        assert (ROOT / entry).exists(), f"README.md's Layout section names {entry}, which is not in the tree"


def test_every_package_docstring_says_its_job() -> None:
    """Each package's __init__.py opens with a docstring whose first line says what the package is for."""
    for init in sorted(PKG.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()[0]) > 20, f"{init.relative_to(ROOT)}: no docstring saying its one job"
