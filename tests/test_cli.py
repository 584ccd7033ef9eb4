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


def test_version_and_defaults_in_help():
    import infire

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"infire {infire.__version__}"
    gen = " ".join(run("generate", "--help").stdout.split())
    assert "most tokens to generate (default: 256)" in gen
    assert "0 for greedy decoding (default: 0.0)" in gen
    assert "random seed" in gen
    srv = " ".join(run("serve", "--help").stdout.split())
    for text in ("(default: 8000)", "(default: 127.0.0.1)", "--log-format", "(default: text)"):
        assert text in srv, text
    assert "--allow-unknown-fields" in srv and "(default: 30.0)" in srv


def test_sampling_without_a_seed_differs_per_run_and_a_seed_repeats(default_model_path):
    args = ("generate", "Once upon a time", "--model", default_model_path, "--device", "cpu")
    sampled = (*args, "--temperature", "1.0", "--max-tokens", "12", "-v")
    runs = [run(*sampled) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    seeds = [
        line.split()[-1] for r in runs for line in r.stderr.splitlines() if "infire: seed" in line
    ]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert runs[0].stdout != runs[1].stdout  # 12 tokens drawn at temperature 1
    fixed = [run(*sampled, "--seed", "7") for _ in range(2)]
    assert fixed[0].stdout == fixed[1].stdout and "infire: seed 7" in fixed[0].stderr
    negative = run(*sampled, "--seed", "-1")
    assert negative.returncode == 0 and "infire: seed -1" not in negative.stderr


def test_an_empty_answer_is_explained(default_model_path):
    # The instruct model ends a bare question at once; the note suggests --chat.
    r = run("generate", "What is the capital of France?", "--model", default_model_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
    assert "produced no text" in r.stderr and "--chat" in r.stderr
