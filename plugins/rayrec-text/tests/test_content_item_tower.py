"""Tests for content_item_tower: the content part is trained to stand alone (an extra loss over
content-only vectors, and optionally id dropout), in training only."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import rayrec_text
from rayrec import plugins
from rayrec_text import ContentItemTower

NUM_ITEMS, DIM, CONTENT_DIM = 400, 8, 6


@pytest.fixture
def text_plugin(register_rayrec_plugin) -> str:
    plugins.load_plugins()
    if plugins.pm.is_registered(rayrec_text):
        return plugins.pm.get_name(rayrec_text)
    return register_rayrec_plugin(rayrec_text)


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
    assert (encoder.options.content_loss_weight, encoder.options.id_dropout) == (1.0, 0.0)


@torch.no_grad()
def test_at_inference_trained_items_keep_their_whole_id_part(text_plugin):
    tower = build({"id_dropout": 0.5}).eval()
    index = torch.arange(1, NUM_ITEMS + 1)
    expected = content_only(tower, index) + tower.id_embedding(index)
    torch.testing.assert_close(tower(index), expected)
    torch.testing.assert_close(tower(index), tower(index))  # deterministic


@torch.no_grad()
def test_in_training_about_id_dropout_of_the_items_are_content_only(text_plugin):
    tower = build({"id_dropout": 0.3}).train()
    index = torch.arange(1, NUM_ITEMS + 1)
    vectors, side = tower(index), content_only(tower, index)  # one draw of the dropout mask
    dropped = torch.isclose(vectors, side, atol=1e-6).all(dim=1)
    assert 0.2 < dropped.float().mean().item() < 0.4
    # The rest carry their full id part (no rescaling), exactly as at inference.
    kept = ~dropped
    torch.testing.assert_close(vectors[kept], (side + tower.id_embedding(index))[kept])


@torch.no_grad()
def test_id_dropout_extremes(text_plugin):
    index = torch.arange(1, NUM_ITEMS + 1)
    never = build({"id_dropout": 0.0}).train()
    torch.testing.assert_close(never(index), content_only(never, index) + never.id_embedding(index))
    always = build({"id_dropout": 1.0}).train()
    torch.testing.assert_close(always(index), content_only(always, index))


def test_gradients_reach_both_parts(text_plugin):
    tower = build({"id_dropout": 0.5}).train()
    tower(torch.arange(1, NUM_ITEMS + 1)).sum().backward()
    assert tower.id_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tower.content_projection.parameters())


@torch.no_grad()
def test_in_training_the_content_only_vectors_are_an_extra_view_with_its_weight(text_plugin):
    tower = build({"content_loss_weight": 0.7}).train()
    [(view, weight)] = tower.auxiliary_views()
    index = torch.arange(1, NUM_ITEMS + 1)
    assert weight == 0.7
    torch.testing.assert_close(view(index), content_only(tower, index))  # what an unseen item gets
    assert tower.eval().auxiliary_views() == []  # never at inference
    assert build({"content_loss_weight": 0.0}).train().auxiliary_views() == []


def test_the_extra_loss_teaches_content_only_targets_to_beat_full_vectors():
    """The situation of a new item at serving time: its content-only vector must outscore the
    other items' full (id + content) vectors. Users here "ask" for content; with the extra loss
    content-only targets win that contest, without it they are never trained to."""
    from rayrec.models.losses import full_softmax_loss
    from rayrec.models.mean_pool import MeanPoolTower
    from rayrec.models.two_tower import TwoTowerModel

    torch.manual_seed(0)
    content = torch.randn(NUM_ITEMS + 1, CONTENT_DIM)
    targets = torch.randint(1, NUM_ITEMS + 1, (256,))
    queries = content[targets] + 0.1 * torch.randn(256, CONTENT_DIM)

    def cold_ranking_loss(weight: float) -> float:
        torch.manual_seed(1)
        tower = ContentItemTower(num_items=NUM_ITEMS, dim=DIM, content=content, use_id=True,
                                 content_loss_weight=weight)
        model = TwoTowerModel(tower, MeanPoolTower(DIM))
        query_projection = torch.nn.Linear(CONTENT_DIM, DIM)
        optimizer = torch.optim.Adam([*model.parameters(), *query_projection.parameters()], lr=0.02)
        model.train()
        for _ in range(150):  # the training loop's loss, on this toy problem
            outputs = query_projection(queries)
            table = model.item_table()
            loss = full_softmax_loss(outputs, table, targets)
            for view, w in model.auxiliary_item_views():
                loss = loss + w * full_softmax_loss(outputs, table, targets, positive_vectors=view(targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            return full_softmax_loss(query_projection(queries), model.item_table(), targets,
                                     positive_vectors=tower.content_vectors(targets)).item()

    assert cold_ranking_loss(1.0) < 0.5 * cold_ranking_loss(0.0)


def test_training_the_content_part_alone_without_content_is_refused(text_plugin):
    with pytest.raises(ValueError, match="item_features"):
        build({"id_dropout": 0.5}, content=False)
    with pytest.raises(ValueError, match="item_features"):
        build({}, content=False)  # the extra loss is on by default
    assert build({"content_loss_weight": 0.0}, content=False).content is None  # plain id tower is fine


@pytest.mark.parametrize("options", [{"id_dropout": 1.5}, {"id_dropout": -0.1}, {"dropout": 0.5},
                                     {"content_loss_weight": -1}],
                         ids=["above-one", "negative", "misspelt", "negative-weight"])
def test_bad_options_are_rejected(text_plugin, options):
    with pytest.raises(ValidationError):
        plugins.create_component("encoder", "content_item_tower", options)
