"""The `repro` command: every command listed, bad input answered with one line and exit 2."""

import socket

import pytest

from tests.helpers_cli import one_line_error
from tests.helpers_cli import repro_subprocess as repro


def test_help_lists_every_command_of_the_kit():
    out = repro("--help").stdout
    for name in ["serve", "stress", "capture", "watch", "bisect", "trial", "analyze", "issue"]:
        assert f"\n  {name} " in out


def test_serve_help_documents_the_inject_grammar():
    out = repro("serve", "--help").stdout
    for word in ["stall-after", "stall-for", "write-stall", "raise-after", "hazard", "min_running"]:
        assert word in out


@pytest.mark.parametrize("name", ["serve", "stress", "trial", "capture", "watch", "bisect", "issue"])
def test_every_command_that_writes_files_takes_dash_o(name):
    from click.testing import CliRunner

    from repro.cli import cli

    out = CliRunner().invoke(cli, [name, "--help"]).output
    assert "-o, --out" in out, out


@pytest.mark.parametrize("args, words", [
    (["serve", "--inject", "stall-soon=3"], "unknown fault"),
    (["serve", "--model", "/no/such/model"], "no such directory"),
    (["serve", "--layers", "a,b"], "comma-separated"),
])
def test_bad_serve_input_is_one_clear_line_and_exit_2(args, words):
    r = repro(*args)
    assert r.returncode == 2
    assert words in one_line_error(r, help_ok=True, click_usage=True)


def test_storage_that_is_not_a_directory_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 4}')
    r = repro("serve", "--storage", str(f), "--model", str(tmp_path))
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_refused_before_vllm_starts(tmp_path):
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 4}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = repro("serve", "--model", str(tmp_path), "--port", str(port), "--storage", str(tmp_path / "hs"),
                  "--vllm-cmd", "false", "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "already in use" in one_line_error(r, code=None, help_ok=True)
