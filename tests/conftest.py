"""Shared fixtures. The default model is fetched once (as a user's first run would) and
shared by every test; engines are module-scoped because loading one takes about a second."""

import pytest

import infire


@pytest.fixture(scope="session")
def default_model_path() -> str:
    return str(infire.default_model_path())


@pytest.fixture(scope="module")
def engine(default_model_path) -> infire.Engine:
    return infire.Engine(model=default_model_path, device="cpu")
