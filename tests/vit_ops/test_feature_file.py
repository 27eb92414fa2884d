"""The fusion head's features on disk (`vit_ops.feature_file`): the same head as from memory, rows
read back exactly and in the order asked, the file never mapped into the process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from vit_ops.feature_file import FeatureFile, write_features
from vit_ops.fusion import SlotDropout, train_fusion, train_head_on_features
from vit_ops.training import FitConfig, predict_set


class _Featurizer(nn.Module):
    """A stand-in frozen sub-model: (logits, features) from a fixed random projection."""

    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feature_dim = width
        self.proj = nn.Linear(3 * 16 * 16, width)

    def forward(self, x):
        features = torch.tanh(self.proj(x.flatten(1)))
        return features[:, :2], features


def test_head_from_the_file_is_the_head_from_memory(digits, tmp_path):
    subs = [_Featurizer(12, 0), _Featurizer(7, 1)]
    train = digits.train.head(300)
    config = FitConfig(epochs=3, batch_size=32, lr=3e-3, seed=5)
    from_file = train_fusion(subs, train, 10, 16, config, dropout=SlotDropout(),
                             scratch_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the features file is gone with the training
    features, labels = predict_set(lambda x: torch.cat([s(x)[1] for s in subs], dim=-1), train)
    in_memory = train_head_on_features(torch.utils.data.TensorDataset(features, labels),
                                       [12, 7], 10, 16, config, dropout=SlotDropout())
    for (name, a), (_, b) in zip(from_file.state_dict().items(),
                                 in_memory.state_dict().items()):
        assert torch.equal(a, b), name


def test_rows_come_back_exactly_in_the_order_asked_without_mapping_the_file(digits, tmp_path):
    sub = _Featurizer(10, 2)
    data = digits.test.head(100)
    stored = write_features(lambda x: sub(x)[1], data, tmp_path / "f.f32")
    expected, labels = predict_set(lambda x: sub(x)[1], data)
    assert (tmp_path / "f.f32").stat().st_size == 100 * 10 * 4
    assert torch.equal(stored.labels, labels) and len(stored) == 100
    order = np.random.default_rng(0).permutation(100)
    for start in range(0, 100, 10):
        batch = [int(i) for i in order[start:start + 10]]
        rows = stored.__getitems__(batch)
        assert torch.equal(torch.stack([r for r, _ in rows]), expected[batch])
        assert [int(y) for _, y in rows] == labels[batch].tolist()
    assert torch.equal(stored[7][0], expected[7])
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: read, never mapped into this process
        assert str(tmp_path / "f.f32") not in maps.read_text()
    with pytest.raises(RuntimeError, match="expected"):
        FeatureFile(tmp_path / "f.f32", 11, labels)
