import torch

from gaal_cli.config import DataConfig, SyntheticConfig
from gaal_cli.data import build_data, make_loader, synthetic


def small(**kw):
    return DataConfig(image_size=16, synthetic=SyntheticConfig(n_train=200, n_val=60, n_test=60, **kw))


def test_synthetic_is_deterministic_per_seed():
    a, b, c = build_data(small(), 1), build_data(small(), 1), build_data(small(), 2)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.tabular, b.test.tabular)
    assert not torch.equal(a.train.images, c.train.images)


def test_synthetic_schema_and_standardisation():
    data = build_data(small(), 0)
    n_cont = data.schema.field_lengths.count(1)
    assert data.schema.field_lengths[n_cont:] == (5, 8, 3)
    train = data.train.tabular[:, :n_cont]
    assert torch.allclose(train.mean(0), torch.zeros(n_cont), atol=1e-5)
    assert torch.allclose(train.std(0), torch.ones(n_cont), atol=1e-4)
    cats = data.train.tabular[:, n_cont:]
    assert (cats == cats.round()).all() and (cats >= 0).all()
    assert len(data.train) == 200 and len(data.val) == 60 and data.num_classes == 10


def test_pairs_hide_information_from_one_modality():
    """Image-only pairs share the table distribution; table-only pairs share the picture."""
    world = synthetic._world(10, 6, 3)
    for a, b in build_data(small(), 0).info["image_only_pairs"]:
        assert world["table_id"][a] == world["table_id"][b] and world["image_id"][a] != world["image_id"][b]
    for a, b in build_data(small(), 0).info["table_only_pairs"]:
        assert world["image_id"][a] == world["image_id"][b] and world["table_id"][a] != world["table_id"][b]


def test_loader_batches_cover_split_once():
    data = build_data(small(), 0)
    seen = torch.cat([b.label for b in make_loader(data.val, 16, shuffle=True, seed=3)])
    assert len(seen) == 60
    first = next(iter(make_loader(data.val, 16, shuffle=False)))
    assert first.image.dtype == torch.float32 and first.image.max() <= 1.0 and first.image.shape == (16, 3, 16, 16)
