"""The last check before packing: every file read back, anything found masked and counted, fail closed."""

from __future__ import annotations

import json
import struct
import tarfile
import zlib
from pathlib import Path

from repro.bundle.reader import unpack
from repro.bundle.writer import BundleWriter
from repro.secrets.lastcheck import Member, check
from repro.secrets.redact import Redactor
from tests.helpers_secrets import FORMATS

SLACK = FORMATS["SlackDetector"][0]
STRIPE = FORMATS["StripeDetector"][0]


def _png(text_chunks: dict[str, str]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    for k, v in text_chunks.items():
        out += chunk(b"tEXt", k.encode() + b"\0" + v.encode("latin-1"))
    return out + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


def _writer(tmp: Path) -> BundleWriter:
    w = BundleWriter(tmp / "bundle-001", Redactor())
    w.write_text("context/server.log.tail", "(APIServer pid=1) INFO started\n")
    w.write_json("analysis.json", {"verdict": "blocked", "signature": "6a64e85b59ad"})
    w.write_bytes("timeline.png", _png({"Software": "Matplotlib version3.8"}))
    w.write_text("summary.md", "# repro bundle bundle-001\n")
    return w


def test_a_file_written_behind_the_writers_back_is_masked_counted_and_said(tmp_path: Path) -> None:
    """GIVEN a secret that reached a bundle file without passing the writer WHEN the bundle is finished THEN it is
    masked in that file and wherever else it appears, counted by rule in manifest.json (never the value), the
    summary says so, and no file of the unpacked tarball holds it."""
    value, part = FORMATS["KeywordDetector"]  # found where it is assigned; alone, only by value
    w = _writer(tmp_path)
    (w.dir / "context/extra.txt").write_text(f"hook {SLACK}\nconfig {value}\n")
    (w.dir / "context/extra2.json").write_text(json.dumps({"again": part}) + "\n")
    manifest, tar = w.finish({})
    assert tar is not None and w.not_packed is None
    lc = manifest["last_check"]
    assert lc["masked"] == {"known_secret": 1, "secret_name": 1, "slack_token": 1} and lc["total"] == 3
    summary = (w.dir / "summary.md").read_text()
    assert "Secret check" in summary and "slack_token 1" in summary
    d = unpack(tar, tmp_path / "u")
    for p in d.rglob("*"):
        if p.is_file():
            for s in (SLACK.rsplit("/", 1)[1], part):
                assert s.encode() not in p.read_bytes(), p
    assert json.loads((d / "context/extra2.json").read_text()) == {"again": "[REDACTED]"}


def test_a_clean_bundle_says_nothing_was_found(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    manifest, tar = w.finish({})
    assert tar is not None and manifest["last_check"]["total"] == 0 and manifest["last_check"]["unreadable"] == []
    assert "nothing found" in (w.dir / "summary.md").read_text()


def test_a_file_the_check_cannot_read_completely_stops_the_packing(tmp_path: Path) -> None:
    """GIVEN a bundle file that is not text WHEN the bundle is finished THEN no tarball (nor a partial one) is
    written and one line names the file and why; the manifest records it."""
    w = _writer(tmp_path)
    (w.dir / "context/raw.bin").write_bytes(b"ok\xff\xfe\x00")
    manifest, tar = w.finish({})
    assert tar is None
    assert w.not_packed == "context/raw.bin: not UTF-8 text (byte 0xff at offset 2); only text files and PNG " \
                           "images can be checked"
    assert "\n" not in w.not_packed
    assert manifest["last_check"]["not_packed"] == w.not_packed
    assert not list(tmp_path.glob("*.tar.gz*"))
    assert "not packed" in (w.dir / "summary.md").read_text()


def test_a_png_with_a_secret_in_its_text_chunks_is_not_packed(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write_bytes("timeline.png", _png({"Comment": f"made with {STRIPE}"}))
    _, tar = w.finish({})
    assert tar is None and w.not_packed and w.not_packed.startswith("timeline.png: a secret in a PNG text chunk")


def test_a_file_changed_after_the_check_is_not_in_a_tarball(tmp_path: Path) -> None:
    """The archive is read back: its members must be exactly the bytes the last check read."""
    w = _writer(tmp_path)
    w.finish({}, tarball=False)
    (w.dir / "context/server.log.tail").write_text(f"changed {SLACK}\n")
    assert w.make_tarball() is None
    assert w.not_packed == "context/server.log.tail: changed after the last check read it"


def test_an_escaped_secret_inside_a_json_string_is_found_and_the_json_stays_valid() -> None:
    value, part = FORMATS["KeywordDetector"]
    raw = json.dumps({"note": value, "n": 3}, indent=1).encode()
    rep = check([Member("context/scenario.json", raw)], Redactor())
    assert rep.files[0].findings and rep.files[0].fixed is not None
    fixed = json.loads(rep.files[0].fixed)
    assert part not in fixed["note"] and fixed["n"] == 3


def test_stack_samples_are_redacted_after_they_are_taken(tmp_path: Path) -> None:
    """Inside BundleWriter.deferred() nothing is redacted or written; on exit everything is, in order."""
    w = BundleWriter(tmp_path / "b", Redactor())
    with w.deferred():
        w.write_json("stacks/x/sample-0.json", {"cmd": ["--api-key", "zzsecretzz9"]})
        w.record("py-spy", command=["py-spy", "--api-key", "zzsecretzz9"], exit_code=0, duration=0.1)
        w.error("x", "failed with Bearer zzsecretzz9")
        assert not (tmp_path / "b/stacks/x/sample-0.json").exists()
        assert w.collectors[0]["command"][2] == "zzsecretzz9"  # not yet redacted
    assert "zzsecretzz9" not in (tmp_path / "b/stacks/x/sample-0.json").read_text()
    assert w.collectors[0]["command"] == ["py-spy", "--api-key", "[REDACTED]"]
    assert "zzsecretzz9" not in w.errors[0]["message"]
    with tarfile.open(w.finish({})[1]) as tf:  # type: ignore[arg-type]
        assert all(b"zzsecretzz9" not in tf.extractfile(m).read() for m in tf if m.isfile())  # type: ignore[union-attr]
