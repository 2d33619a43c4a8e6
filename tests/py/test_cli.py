"""The fdpo command's shared behaviour: help, unknown commands and flags."""
import os
import subprocess

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))


def run(*args):
    return subprocess.run([FDPO, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for c in ["pretrain", "sft", "dpo", "eval", "lab", "report", "tokenize", "info"]:
        assert f"  {c} " in r.stdout


def test_unknown_command():
    r = run("frobnicate")
    assert r.returncode != 0
    assert "unknown command 'frobnicate'" in r.stderr
