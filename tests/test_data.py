import hashlib
import json

import pytest
import torch

from gaal_cli.config import DataConfig, SyntheticConfig, load_config
from gaal_cli.data import build_data, make_loader, synthetic
from gaal_cli.foundation.errors import GaalError


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


# sha256 of the default embedded dataset (seed 2022) as generated before the regimes existed
COMPLEMENTARY_SHA256 = "6b738d62efc3300656fb9c38c267fb522a1b1a639f0e268504d0f295e7b9980a"


def dataset_digest(data) -> str:
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for t in (split.images, split.tabular, split.labels):
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.contiguous().numpy().tobytes())
    meta = [data.class_names, list(data.schema.names), list(data.schema.field_lengths), data.info]
    digest.update(json.dumps(meta, default=list).encode())
    return digest.hexdigest()


def test_complementary_regime_is_the_dataset_it_always_was():
    """Every committed result used this dataset: the default must stay bit for bit the same."""
    assert dataset_digest(build_data(DataConfig(), 2022)) == COMPLEMENTARY_SHA256


@pytest.mark.parametrize("regime", ["table_dominant", "image_dominant"])
def test_dominant_regimes_are_deterministic_per_seed(regime):
    a, b, c = (build_data(small(regime=regime, dominance=0.5), seed) for seed in (1, 1, 2))
    for name in ("images", "tabular", "labels"):
        assert torch.equal(getattr(a.train, name), getattr(b.train, name))
        assert torch.equal(getattr(a.test, name), getattr(b.test, name))
    assert not torch.equal(a.train.images, c.train.images) and not torch.equal(a.train.tabular, c.train.tabular)
    assert a.info["regime"] == regime and a.info["dominance"] == 0.5


def test_in_dominant_regimes_each_modality_carries_every_class():
    """No class shares its table or its picture with another (unlike the complementary pairs)."""
    data = build_data(small(regime="table_dominant"), 0)
    tab, labels = data.train.tabular[:, :6], data.train.labels
    means = torch.stack([tab[labels == c].mean(0) for c in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10) * 1e3).min() > 0.5  # ten distinct table clusters
    assert "image_only_pairs" not in data.info


def test_dominance_makes_one_modality_cleaner_and_the_other_noisier():
    table = [synthetic.regime_noise("table_dominant", d, 0.8, 0.35, 0.1) for d in (0.0, 0.5, 1.0)]
    image = [synthetic.regime_noise("image_dominant", d, 0.8, 0.35, 0.1) for d in (0.0, 0.5, 1.0)]
    assert table[0] == image[0] == synthetic.BALANCED  # dominance 0: the same balanced point
    assert table[0].tabular > table[1].tabular > table[2].tabular
    assert table[0].pixel < table[1].pixel < table[2].pixel
    assert image[0].tabular < image[1].tabular < image[2].tabular
    assert image[0].hue_jitter > image[1].hue_jitter > image[2].hue_jitter
    assert synthetic.regime_noise("table_dominant", None, 0.8, 0.35, 0.1) == table[2]  # calibrated default


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.synthetic.dominance=0.5", "table_dominant and image_dominant regimes only"),
        ("data.synthetic.regime=sideways", "complementary"),
    ],
)
def test_regime_knobs_are_checked(override, message):
    with pytest.raises(GaalError, match=message):
        load_config(None, [override])


def test_noise_knobs_are_refused_where_dominance_sets_them():
    with pytest.raises(GaalError, match="tabular_noise tunes the complementary regime only"):
        load_config(None, ["data.synthetic.regime=table_dominant", "data.synthetic.tabular_noise=0.2"])
    config = load_config(None, ["data.synthetic.regime=image_dominant", "data.synthetic.dominance=0.3"])
    assert load_config(None, [f"data.synthetic={json.dumps(config.data.synthetic.model_dump())}"])  # round trip
