"""Tests for content_item_tower: full vectors at inference; in training, a second softmax over a
catalogue where a random share of the items is represented by content alone."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from rayrec import plugins
from rayrec_text import ContentItemTower

NUM_ITEMS, DIM, CONTENT_DIM = 400, 8, 6


def build(options: dict, content: bool = True) -> ContentItemTower:
    torch.manual_seed(0)
    encoder = plugins.create_component("encoder", "content_item_tower", options)
    features = torch.randn(NUM_ITEMS + 1, CONTENT_DIM) if content else None
    return encoder.build(num_items=NUM_ITEMS, dim=DIM, content=features)


def content_only(tower: ContentItemTower, index: torch.Tensor) -> torch.Tensor:
    return tower.from_features(None, None, tower.content[index])


def test_registers_as_an_item_encoder(text_plugin):
    encoder = plugins.create_component("encoder", "content_item_tower", {})
    assert encoder.kind == "item"
    assert (encoder.options.content_loss_weight, encoder.options.id_dropout) == (1.0, 0.5)


@torch.no_grad()
def test_trained_items_always_get_their_whole_id_part_in_the_main_path(text_plugin):
    tower = build({})
    index = torch.arange(1, NUM_ITEMS + 1)
    expected = tower.content_projection(tower.content[index]) + tower.id_embedding(index)
    torch.testing.assert_close(tower.eval()(index), expected)
    torch.testing.assert_close(tower.train()(index), expected)  # no dropout outside the second softmax


@torch.no_grad()
def test_the_mixed_view_represents_about_id_dropout_of_the_items_by_content_alone(text_plugin):
    tower = build({"id_dropout": 0.3}).train()
    index = torch.arange(1, NUM_ITEMS + 1)
    vectors, side = tower.mixed_vectors(index), content_only(tower, index)
    dropped = torch.isclose(vectors, side, atol=1e-6).all(dim=1)
    assert 0.2 < dropped.float().mean().item() < 0.4
    kept = ~dropped  # the rest are their full vectors, exactly as at inference
    torch.testing.assert_close(vectors[kept], tower(index)[kept])
    never, always = build({"id_dropout": 0.0}), build({"id_dropout": 1.0})
    torch.testing.assert_close(never.mixed_vectors(index), never(index))
    torch.testing.assert_close(always.mixed_vectors(index), content_only(always, index))


@torch.no_grad()
def test_the_mixed_view_reuses_the_full_vectors_it_is_handed_and_the_model_passes_them_on(text_plugin):
    from rayrec.models.mean_pool import MeanPoolTower
    from rayrec.models.two_tower import TwoTowerModel

    tower = build({"id_dropout": 0.3}).train()
    index = torch.arange(0, NUM_ITEMS + 1)
    marked = tower(index) + 100.0  # full vectors the tower could not have computed itself
    vectors = tower.mixed_vectors(index, full_vectors=marked)
    reused = torch.isclose(vectors, marked).all(dim=1)
    torch.testing.assert_close(vectors[~reused], content_only(tower, index)[~reused])
    assert 0.6 < reused.float().mean().item() < 0.8
    [(view, _, _)] = TwoTowerModel(tower, MeanPoolTower(DIM)).auxiliary_item_views()
    assert torch.isclose(view(index, full_vectors=marked), marked).all(dim=1).float().mean() > 0.6


@torch.no_grad()
def test_the_mixed_view_is_offered_in_training_only_with_its_weight(text_plugin):
    tower = build({"content_loss_weight": 0.7, "content_loss_positions": 0.25}).train()
    [(view, weight, position_share)] = tower.auxiliary_views()
    assert weight == 0.7 and position_share == 0.25 and view == tower.mixed_vectors
    assert tower.eval().auxiliary_views() == []
    assert build({"content_loss_weight": 0.0}).train().auxiliary_views() == []


def test_gradients_reach_both_parts_through_the_mixed_view(text_plugin):
    tower = build({}).train()
    tower.mixed_vectors(torch.arange(1, NUM_ITEMS + 1)).sum().backward()
    assert tower.id_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tower.content_projection.parameters())
    assert all(p.grad is not None for p in tower.new_item_projection.parameters())


@torch.no_grad()
def test_content_alone_goes_through_its_own_projection_unless_turned_off(text_plugin):
    tower, shared = build({}).eval(), build({"new_item_projection": False}).eval()
    content = tower.content[1:5]
    torch.testing.assert_close(tower.from_features(None, None, content), tower.new_item_projection(content))
    torch.testing.assert_close(shared.from_features(None, None, content), shared.content_projection(content))
    assert shared.new_item_projection is None


@torch.no_grad()
def test_weights_saved_without_the_new_item_projection_still_load(text_plugin):
    """Models trained before the option existed: content alone uses the shared projection."""
    old = build({"new_item_projection": False})
    tower = build({})
    tower.load_state_dict(old.state_dict())
    assert tower.new_item_projection is None
    content = old.content[1:5]
    torch.testing.assert_close(tower.from_features(None, None, content), old.from_features(None, None, content))


#: Starts of the toy model below: the crowding it checks differs a lot between single starts.
SECOND_SOFTMAX_SEEDS = (1, 2, 3, 4, 5)


@pytest.mark.parametrize("own_projection", [True, False], ids=["new-item-projection", "shared-projection"])
def test_the_second_softmax_ranks_new_items_by_content_without_crowding_out_trained_ones(own_projection):
    """Serving's situation on a toy problem: users "ask" for an item's content; at test time half
    the catalogue is new (content-only vectors) and half trained (full vectors). With the second
    softmax, new targets rank well; trained targets still do (new items do not crowd them out)."""
    from rayrec.models.losses import full_softmax_loss
    from rayrec.models.mean_pool import MeanPoolTower
    from rayrec.models.two_tower import TwoTowerModel

    torch.manual_seed(0)
    content = torch.randn(NUM_ITEMS + 1, CONTENT_DIM)
    targets = torch.randint(1, NUM_ITEMS + 1, (256,))
    queries = content[targets] + 0.1 * torch.randn(256, CONTENT_DIM)
    every_item = torch.arange(NUM_ITEMS + 1)
    is_new = torch.rand(NUM_ITEMS + 1) < 0.5

    def test_losses(weight: float, seed: int) -> tuple[float, float, float]:
        torch.manual_seed(seed)
        tower = ContentItemTower(num_items=NUM_ITEMS, dim=DIM, content=content, use_id=True,
                                 content_loss_weight=weight, new_item_projection=own_projection)
        model = TwoTowerModel(tower, MeanPoolTower(DIM))
        query_projection = torch.nn.Linear(CONTENT_DIM, DIM)
        optimizer = torch.optim.Adam([*model.parameters(), *query_projection.parameters()], lr=0.02)
        model.train()
        for _ in range(150):  # the training loop's losses, on this toy problem
            outputs = query_projection(queries)
            loss = full_softmax_loss(outputs, model.item_table(), targets)
            for view, w, _ in model.auxiliary_item_views():
                loss = loss + w * full_softmax_loss(outputs, view(every_item), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            served = torch.where(is_new[:, None], tower.content_vectors(every_item), tower(every_item))
            losses = torch.nn.functional.cross_entropy(query_projection(queries) @ served.T, targets, reduction="none")
            alone = torch.nn.functional.cross_entropy(query_projection(queries) @ tower(every_item).T, targets,
                                                      reduction="none")  # no new items at all
            new_targets = is_new[targets]
            return (losses[new_targets].mean().item(), losses[~new_targets].mean().item(),
                    alone[~new_targets].mean().item())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only lose to thread contention (10x slower on a busy box)
    try:
        trained_with_sum = trained_without_sum = 0.0
        for seed in SECOND_SOFTMAX_SEEDS:
            new_with, trained_with, trained_alone = test_losses(1.0, seed)
            new_without, trained_without, _ = test_losses(0.0, seed)
            assert new_with < 0.5 * new_without, seed
            # New items take little from trained targets: they keep most of the probability (CE 0.25 = 78%).
            assert trained_alone < trained_with < 0.25, seed
            trained_with_sum += trained_with
            trained_without_sum += trained_without
    finally:
        torch.set_num_threads(threads)
    if not own_projection:  # without the second softmax, shared-projection content rows crowd them out
        # On average over starts: in a single one the crowding varies a lot (trained CE without the
        # second softmax 0.07 to 0.31 over these seeds, with it 0.06 to 0.08).
        assert trained_with_sum < 0.5 * trained_without_sum


def test_the_second_softmax_without_content_to_fall_back_on_is_refused(text_plugin):
    with pytest.raises(ValueError, match="item_features"):
        build({}, content=False)
    assert build({"content_loss_weight": 0.0}, content=False).content is None  # plain id tower is fine


@pytest.mark.parametrize("options", [{"id_dropout": 1.5}, {"id_dropout": -0.1}, {"dropout": 0.5},
                                     {"content_loss_weight": -1}],
                         ids=["above-one", "negative", "misspelt", "negative-weight"])
def test_bad_options_are_rejected(text_plugin, options):
    with pytest.raises(ValidationError):
        plugins.create_component("encoder", "content_item_tower", options)


def test_a_training_config_with_the_tower_and_text_features_passes_the_early_check(text_plugin, tmp_path):
    """``rayrec train --config`` checks components on a tiny model before Ray starts; that model
    must get content vectors when the config has item features, as training gives it."""
    from rayrec.errors import ConfigError
    from rayrec.training.config import check_components, load_train_config

    config = tmp_path / "train.yaml"
    config.write_text("item_features:\n  - name: text_embedding\n"
                      "model:\n  item_encoder: content_item_tower\n"
                      "  item_encoder_options: {content_loss_positions: 0.25}\n")
    check_components(load_train_config(config))
    without_text = tmp_path / "no-text.yaml"
    without_text.write_text("model:\n  item_encoder: content_item_tower\n")
    with pytest.raises(ConfigError, match="item_features"):
        check_components(load_train_config(without_text))
