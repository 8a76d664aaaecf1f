

def test_build_submodel_warns_once_per_group_with_negative_anchor_weight():
    """DBLF with a large group warns about the negative anchor weight once, not once per fusion."""
    import warnings

    from devft_lab.method.submodel import build_submodel
    from devft_lab.core.models import load_model

    model, _ = load_model("tiny-llama")
    L = len(model.model.layers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_submodel(model, [[0], list(range(1, L))], beta=0.5)
    msgs = [str(w.message) for w in caught if "anchor weight" in str(w.message)]
    assert len(msgs) == 1, msgs
