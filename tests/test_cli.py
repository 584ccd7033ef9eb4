"""The ``infire`` command line, run as a user would."""

import subprocess
import sys


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "infire", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("generate", "download"):
        assert cmd in r.stdout
    r = run("generate", "--help")
    for flag in ("--model", "--max-tokens", "--temperature", "--chat"):
        assert flag in r.stdout


def test_generate_chat_answers_paris(default_model_path):
    r = run("generate", "What is the capital of France?", "--chat", "--model", default_model_path)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_generate_bad_model_path_is_a_clear_error():
    r = run("generate", "hi", "--model", "/no/such/model.gguf")
    assert r.returncode == 2
    assert "model not found" in r.stderr
    assert "Traceback" not in r.stderr
