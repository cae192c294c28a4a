"""A trained model directory's network is loaded with its weights mapped from weights.pt (not
read into each replica, no random initialisation) and answers exactly as the weights it was
trained with; plugin towers that cannot be built that way load as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from rayrec.components import UserEncoder
from rayrec.hookspecs import hookimpl
from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_two_tower
from rayrec.models.trained import TrainedModel

HISTORIES = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [2, 2, 2, 1]]


def train(tmp_path, model: dict):
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    data = generate(SyntheticConfig(num_users=40, num_items=30, num_clusters=3, mean_events_per_user=8))
    return train_in_process(data, tmp_path / "model", TrainConfig(epochs=1, model={"dim": 8, "max_len": 10, **model}),
                            log=lambda line: None)


def read_as_before(model_dir, loaded: TrainedModel) -> nn.Module:
    """The network built on the CPU with weights.pt read into it (how it was loaded before)."""
    network = build_two_tower(ModelConfig(**loaded.config["train_config"]["model"]), len(loaded.item_vocab))
    network.load_state_dict(torch.load(model_dir / "weights.pt", weights_only=True))
    return network.eval()


@pytest.mark.parametrize("model", [{}, {"user_encoder": "mean"}, {"user_encoder": "gru"}],
                         ids=["sasrec", "mean", "gru"])
def test_a_loaded_model_holds_the_trained_weights_and_answers_as_they_do(tmp_path, model):
    model_dir = train(tmp_path, model)
    loaded = TrainedModel.load(model_dir)
    before = read_as_before(model_dir, loaded)
    assert loaded.network.state_dict().keys() == before.state_dict().keys()
    for name, tensor in before.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], tensor), name
    assert not any(t.is_meta for t in (*loaded.network.parameters(), *loaded.network.buffers()))
    with torch.no_grad():
        sequences = torch.tensor([[0] * (10 - len(h)) + h for h in HISTORIES])
        assert torch.allclose(loaded.network.user_vectors(sequences), before.user_vectors(sequences), atol=1e-6)
    as_before = TrainedModel.load(model_dir)
    as_before.network = before
    histories = [[i - 1 for i in h] for h in HISTORIES]  # 0-based, as serving hands them over
    assert np.allclose(loaded.encode_histories(histories)[0], as_before.encode_histories(histories)[0], atol=1e-6)


class OffsetTower(nn.Module):
    """A plugin user tower that keeps a tensor the weights do not hold (a non-persistent
    buffer) and computes with its parameters while it is built."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(dim, dim)
        self.register_buffer("offset", torch.full((dim,), 0.5), persistent=False)
        self.built_with_norm = float(self.mix.weight.norm())  # fails on the meta device

    def forward(self, item_vectors, mask):
        return self.mix(item_vectors) + self.offset

    def encode_last(self, item_vectors, mask):
        outputs = self.forward(item_vectors, mask)[:, -1]
        return outputs, mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1)

    def attribution(self, item_vectors, mask):
        return mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1)


class OffsetEncoder(UserEncoder):
    name = "test-offset-tower"
    description = "A linear map plus a fixed offset."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def build(self, *, dim: int, **_):
        return OffsetTower(dim)


class OffsetPlugin:
    @hookimpl
    def register_encoders(register):
        register(OffsetEncoder)


def test_a_plugin_tower_that_cannot_be_built_on_the_meta_device_loads_as_before(tmp_path, register_rayrec_plugin):
    register_rayrec_plugin(OffsetPlugin, name="test-offset-tower")
    model_dir = train(tmp_path, {"user_encoder": "test-offset-tower"})
    loaded = TrainedModel.load(model_dir)
    before = read_as_before(model_dir, loaded)
    assert torch.equal(loaded.network.user_tower.offset, torch.full((8,), 0.5))
    with torch.no_grad():
        sequences = torch.tensor([[0] * (10 - len(h)) + h for h in HISTORIES])
        assert torch.allclose(loaded.network.user_vectors(sequences), before.user_vectors(sequences), atol=1e-6)
