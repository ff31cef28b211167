import pytest

from bie_compiler.models import write_all


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The bundled models written once per session: {name: path}."""
    directory = tmp_path_factory.mktemp("models")
    return {p.stem: p for p in write_all(directory)}
