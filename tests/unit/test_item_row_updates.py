"""Under the sampled softmax the item id table is updated row by row (rayrec.training.optimizer):
a step leaves the items it did not touch where they were, the run still learns, and its
optimizer state survives a checkpoint."""

import copy

import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_two_tower
from rayrec.training.optimizer import build_optimizer, clip_gradients, row_wise_item_updates_apply

NUM_ITEMS = 50


def model_and_optimizer(row_wise: bool):
    torch.manual_seed(0)
    model = build_two_tower(ModelConfig(dim=8, max_len=5, loss="sampled"), NUM_ITEMS)
    return model, build_optimizer(model, learning_rate=0.1, weight_decay=0.0, item_rows_row_wise=row_wise)


def step_on(model, optimizer, items: list[int]) -> None:
    """One optimizer step whose loss involves ``items``' rows alone."""
    optimizer.zero_grad()
    model.item_tower(torch.tensor(items)).pow(2).sum().backward()
    clip_gradients(model.parameters(), 5.0)
    optimizer.step()


def item_rows(model) -> torch.Tensor:
    return model.item_tower.id_embedding.weight.detach().clone()


def test_items_a_step_does_not_touch_keep_their_vectors_row_wise_but_drift_densely():
    for row_wise, first_items_move_again in ((True, False), (False, True)):
        model, optimizer = model_and_optimizer(row_wise)
        step_on(model, optimizer, [1, 2, 3])
        after_first = item_rows(model)
        step_on(model, optimizer, [10, 11])
        after_second = item_rows(model)
        # The second step's items moved either way.
        assert not torch.allclose(after_first[[10, 11]], after_second[[10, 11]])
        # The first step's items: dense AdamW's momentum moves them again; row by row it does not.
        assert torch.equal(after_first[[1, 2, 3]], after_second[[1, 2, 3]]) is not first_items_move_again
        assert torch.equal(after_first[20:], after_second[20:])


def test_sparse_gradients_are_clipped_like_their_dense_equivalent():
    model, _ = model_and_optimizer(row_wise=True)
    twin = copy.deepcopy(model)
    twin.item_tower.id_embedding.sparse = False
    for network in (model, twin):
        # Item 4 twice: a sparse gradient holds two entries for its row until coalesced.
        (network.item_tower(torch.tensor([4, 4, 7])) * 100).sum().backward()
    assert model.item_tower.id_embedding.weight.grad.is_sparse
    norm = clip_gradients(model.parameters(), 1.0)
    twin_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
    torch.testing.assert_close(norm, twin_norm)
    torch.testing.assert_close(model.item_tower.id_embedding.weight.grad.to_dense(),
                               twin.item_tower.id_embedding.weight.grad)


def test_the_optimizer_state_survives_a_checkpoint_and_a_state_of_the_other_kind_starts_afresh():
    model, optimizer = model_and_optimizer(row_wise=True)
    step_on(model, optimizer, [1, 2, 3])
    restored_model, restored = model_and_optimizer(row_wise=True)
    restored_model.load_state_dict(model.state_dict())
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    step_on(model, optimizer, [2, 5])
    step_on(restored_model, restored, [2, 5])
    torch.testing.assert_close(item_rows(model), item_rows(restored_model))

    lines: list[str] = []
    _, dense = model_and_optimizer(row_wise=False)
    dense.load_state_dict(optimizer.state_dict(), log=lines.append)
    assert lines and "start afresh" in lines[0]


@pytest.mark.parametrize("change,reason", [
    ({"loss_kind": "full"}, "full softmax"),
    ({"weight_decay": 0.01}, "weight decay"),
    ({"device": torch.device("cuda"), "world_size": 2}, "NCCL"),
    ({"wanted": False}, "sparse_item_updates is off"),
])
def test_row_wise_updates_apply_only_where_they_can(change, reason):
    model, _ = model_and_optimizer(row_wise=False)
    settings = {"loss_kind": "sampled", "wanted": True, "weight_decay": 0.0, "device": torch.device("cpu"),
                "world_size": 2}
    assert row_wise_item_updates_apply(model, **settings) == (True, "")
    applies, why_not = row_wise_item_updates_apply(model, **{**settings, **change})
    assert not applies and reason in why_not
