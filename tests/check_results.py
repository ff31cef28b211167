"""What the whole-model tests assert of ``parity.check_artefact``'s result."""


def assert_parity(result: dict, max_rel_err: float) -> None:
    """``check`` passed, and the artefact computes its decoded-weights model to ``max_rel_err``, unless the model's
    call ran GEMVs with int8 look-up tables (the default for ``bie-bitplane`` at 2 to 4 planes and ``bbs`` moderate,
    on a CPU with AVX-512 VNNI; one-row inputs): then each of those within its stated bound, which ``check`` holds
    it to, and the end-to-end difference theirs."""
    assert result["passed"], result
    if not any(layer.get("in_model", True) for layer in result.get("int8_table_layers", [])):
        assert result["decoded_max_rel_err"] < max_rel_err, result
