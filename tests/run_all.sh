#!/usr/bin/env bash
# The whole test suite, as the README states it: lint, Rust tests, Python tests.
# Installs what it needs (the package itself, pytest, ruff, and on first run the default model).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --disable-pip-version-check -q ".[test]"
python3 -m infire download >/dev/null

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features python -- -D warnings
python3 -m ruff check python tests bench
python3 -m ruff format --check python tests bench

cargo test --locked
python3 -m pytest -q tests
