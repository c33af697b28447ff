import pytest

TINY = [
    "data.synthetic.n_train=96",
    "data.synthetic.n_val=48",
    "data.synthetic.n_test=48",
    "data.image_size=16",
    "data.batch_size=32",
    "model.feature_dim=16",
    "model.tabular_hidden=[16]",
    "train.epochs=2",
    "train.device=cpu",
]


@pytest.fixture
def tiny():
    """Overrides that make any run train in a second or two on the CPU."""
    return list(TINY)
