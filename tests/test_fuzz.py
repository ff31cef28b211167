"""A few hundred iterations of each fuzzer (tests/fuzz.py runs thousands): every mutated input is accepted
as well-formed or refused with the project's own error; nothing else escapes."""

import pytest

from fuzz import fuzz_manifest, fuzz_tans, fuzz_weights


def test_tans_decoder_survives_mutated_streams():
    outcomes = fuzz_tans(400, seed=1)
    assert outcomes["refused"] > 300  # the mutations do reach the checks


@pytest.mark.slow
def test_artefact_reader_survives_mutated_manifests(model_dir, tmp_path):
    from bie_compiler import compile_model

    artefact = compile_model(model_dir["mlp"], tmp_path / "art", "bie-bitplane", progress=None)
    outcomes = fuzz_manifest(300, seed=1, artefact=artefact)
    assert outcomes["refused"] > 200


@pytest.mark.slow
def test_weights_reader_survives_mutated_weights(model_dir, tmp_path):
    from bie_compiler import compile_model

    artefact = compile_model(model_dir["mlp"], tmp_path / "art", "tans", progress=None)
    outcomes = fuzz_weights(300, seed=1, artefact=artefact)
    assert outcomes["refused"] > 150 and outcomes["accepted"] > 0  # flips in float data are accepted as data
