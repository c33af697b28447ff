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

#: the same for a run on a user table (its size is the table's)
TABLE_TINY = [
    "data.image_size=16",
    "data.batch_size=16",
    "model.feature_dim=16",
    "model.tabular_hidden=[16]",
    "train.epochs=2",
    "train.device=cpu",
]


@pytest.fixture
def tiny():
    """Overrides that make any run train in a second or two on the CPU."""
    return list(TINY)


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory):
    """A checkpoint of an untrained tiny concat run, in the format training writes: enough to
    stand in for a teacher or a fixed model (KD, FMR, model.init_from) in fast tests."""
    from fake_runs import fake_checkpoint

    return fake_checkpoint(tmp_path_factory.mktemp("teacher") / "checkpoint.pt", "concat")
