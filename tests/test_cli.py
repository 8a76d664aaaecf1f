"""The command line: help, exit codes for bad input."""
import subprocess
import sys

from devft_lab.cli import main


def test_help_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "devft_lab.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for word in ("model", "demo"):
        assert word in r.stdout


def test_unknown_preset_exits_2(capsys):
    assert main(["model", "prepare", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_model_list(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "Apache-2.0" in out and "tiny-gemma3" in out
