"""Under the sampled softmax the item id table is updated row by row (rayrec.training.optimizer):
each step touches only its rows, the table still follows dense AdamW, and the optimizer state
survives a checkpoint."""

import copy

import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_two_tower
from rayrec.training.optimizer import (BETAS, RowWiseAdamW, build_optimizer, clip_gradients,
                                       row_wise_item_updates_apply)

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


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_row_wise_steps_follow_dense_adamw_though_each_touches_only_its_rows(weight_decay):
    """300 steps, each on a random tenth of the rows: the table ends where dense AdamW takes
    it (within 3% of how far it moved; the closed-form catch-up takes Adam's bias correction at
    the step it runs), not where "lazy" Adam (torch's SparseAdam, which skips the movement of
    the steps a row missed) does."""
    torch.manual_seed(0)
    start = torch.randn(200, 8)
    tables = {name: torch.nn.Parameter(start.clone()) for name in ("dense", "row_wise", "lazy")}
    optimizers = {
        "dense": torch.optim.AdamW([tables["dense"]], lr=0.01, betas=BETAS, weight_decay=weight_decay),
        "row_wise": RowWiseAdamW([tables["row_wise"]], lr=0.01, betas=BETAS, weight_decay=weight_decay),
        "lazy": torch.optim.SparseAdam([tables["lazy"]], lr=0.01, betas=BETAS),
    }
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        rows = torch.unique(torch.randint(0, 200, (20,), generator=generator))
        target = torch.randn(len(rows), 8, generator=generator)
        for name, table in tables.items():
            optimizers[name].zero_grad()
            vectors = torch.nn.functional.embedding(rows, table, sparse=name != "dense")
            ((vectors - target) ** 2).sum().backward()
            optimizers[name].step()
    untouched_before_flush = tables["row_wise"].detach().clone()
    optimizers["row_wise"].flush()
    assert not torch.equal(untouched_before_flush, tables["row_wise"])  # the rows the last steps missed moved
    moved = (tables["dense"] - start).norm()
    assert (tables["row_wise"] - tables["dense"]).norm() < 0.03 * moved
    assert (tables["lazy"] - tables["dense"]).norm() > 0.2 * moved


def test_the_training_optimizer_updates_the_id_table_row_wise_and_the_rest_densely():
    model, optimizer = model_and_optimizer(row_wise=True)
    assert isinstance(optimizer.item_rows, RowWiseAdamW)
    assert optimizer.item_rows.param_groups[0]["params"] == [model.item_tower.id_embedding.weight]
    assert all(p is not model.item_tower.id_embedding.weight for p in optimizer.dense.param_groups[0]["params"])
    step_on(model, optimizer, [1, 2, 3])
    assert model.item_tower.id_embedding.weight.grad.is_sparse


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


def test_a_checkpoint_of_one_adamw_as_written_before_still_resumes_a_dense_run():
    model, optimizer = model_and_optimizer(row_wise=False)
    step_on(model, optimizer, [1, 2, 3])
    restored_model, restored = model_and_optimizer(row_wise=False)
    restored_model.load_state_dict(model.state_dict())
    lines: list[str] = []
    restored.load_state_dict(copy.deepcopy(optimizer.dense.state_dict()), log=lines.append)
    assert lines == []
    step_on(model, optimizer, [2, 5])
    step_on(restored_model, restored, [2, 5])
    torch.testing.assert_close(item_rows(model), item_rows(restored_model))


@pytest.mark.parametrize("change,reason", [
    ({"loss_kind": "full"}, "full softmax"),
    ({"device": torch.device("cuda"), "world_size": 2}, "NCCL"),
    ({"wanted": False}, "sparse_item_updates is off"),
])
def test_row_wise_updates_apply_only_where_they_can(change, reason):
    model, _ = model_and_optimizer(row_wise=False)
    settings = {"loss_kind": "sampled", "wanted": True, "device": torch.device("cpu"), "world_size": 2}
    assert row_wise_item_updates_apply(model, **settings) == (True, "")
    applies, why_not = row_wise_item_updates_apply(model, **{**settings, **change})
    assert not applies and reason in why_not


def test_a_dense_gradient_on_the_table_is_still_stepped_row_by_row():
    """A plugin tower that reads the whole table (``id_embedding.weight``) hands the optimizer a
    dense gradient; the rows with a gradient move as they would with a sparse one."""
    torch.manual_seed(0)
    start = torch.randn(20, 4)
    tables = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    optimizers = [RowWiseAdamW([table], lr=0.1) for table in tables]
    for table, optimizer, sparse in zip(tables, optimizers, (True, False)):
        torch.nn.functional.embedding(torch.tensor([3, 5]), table, sparse=sparse).sum().backward()
        optimizer.step()
    torch.testing.assert_close(tables[0], tables[1])
    assert not torch.equal(tables[0][[3, 5]], start[[3, 5]]) and torch.equal(tables[0][:3], start[:3])


#: Each worker's rows of a (12, 3) table's gradient, listed with repeats as an embedding's
#: backward pass lists them: overlapping, and one worker with none at all.
WORKER_ROWS = {2: [[1, 4, 4, 7], [4, 9, 1, 1, 11]], 3: [[0, 5], [], [5, 5, 2]]}


def _average_on_worker(rank: int, world_size: int, store_path: str, results: str) -> None:
    import torch.distributed as dist

    from rayrec.training.optimizer import average_row_gradient

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
    try:
        rows = WORKER_ROWS[world_size][rank]
        gradient = None if not rows else torch.sparse_coo_tensor(
            torch.tensor([rows]), torch.arange(len(rows) * 3, dtype=torch.float32).reshape(-1, 3) + rank, (12, 3))
        torch.save(average_row_gradient(gradient, torch.Size((12, 3)), world_size).to_dense(), f"{results}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 3])
def test_workers_average_the_tables_sparse_gradient_as_ddp_would_the_dense_one(tmp_path, world_size):
    """Several workers average the id table's sparse gradients themselves (DDP leaves the table
    alone): every worker ends with the mean of the workers' dense gradients."""
    import torch.multiprocessing as mp

    mp.spawn(_average_on_worker, args=(world_size, str(tmp_path / "store"), str(tmp_path)), nprocs=world_size)
    expected = torch.zeros(12, 3)
    for rank, rows in enumerate(WORKER_ROWS[world_size]):
        if rows:
            expected += torch.sparse_coo_tensor(torch.tensor([rows]), torch.arange(len(rows) * 3, dtype=torch.float32)
                                                .reshape(-1, 3) + rank, (12, 3)).to_dense()
    expected /= world_size
    for rank in range(world_size):
        assert torch.allclose(torch.load(tmp_path / f"{rank}.pt"), expected), rank
