"""The towers and losses behave as their contracts say."""

import numpy as np
import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import ItemInputs, build_two_tower
from rayrec.models.losses import full_softmax_loss, sampled_softmax_loss
from rayrec.training.batches import left_pad, next_item_batch

ENCODERS = ["sasrec", "gru", "mean"]


def make_model(encoder: str, num_items: int = 30, **inputs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_two_tower(ModelConfig(user_encoder=encoder, dim=16, max_len=10), num_items, ItemInputs(**inputs))
    return model.eval()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_outputs_have_one_vector_per_position(encoder):
    model = make_model(encoder)
    sequences = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    assert model.sequence_outputs(sequences).shape == (2, 5, 16)
    assert model.user_vectors(sequences).shape == (2, 16)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_position_t_never_sees_later_items(encoder):
    model = make_model(encoder)
    before = model.sequence_outputs(torch.tensor([[1, 2, 3, 4, 5]]))
    after = model.sequence_outputs(torch.tensor([[1, 2, 3, 9, 7]]))
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-5)
    assert not torch.allclose(before[:, 3:], after[:, 3:], atol=1e-5)


@pytest.mark.parametrize("encoder", ["sasrec", "mean"])
def test_extra_left_padding_does_not_change_the_user_vector(encoder):
    model = make_model(encoder)
    short = model.user_vectors(torch.tensor([[4, 5, 6]]))
    padded = model.user_vectors(torch.tensor([[0, 0, 0, 4, 5, 6]]))
    assert torch.allclose(short, padded, atol=1e-5)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_new_event_changes_the_user_vector_without_retraining(encoder):
    model = make_model(encoder)
    before = model.user_vectors(torch.tensor([[0, 1, 2, 3]]))
    after = model.user_vectors(torch.tensor([[1, 2, 3, 17]]))
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_attribution_is_a_distribution_over_real_history(encoder):
    model = make_model(encoder)
    weights = model.attribution(torch.tensor([[0, 0, 3, 4, 5]]))
    assert weights.shape == (1, 5)
    assert torch.all(weights[0, :2] == 0)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_item_tower_without_ids_gives_equal_vectors_to_equal_content():
    content = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    content[3] = content[2]
    model = build_two_tower(ModelConfig(dim=16, item_encoder_options={"use_id": False}), 4, ItemInputs(content=content))
    table = model.item_table().detach()
    assert torch.allclose(table[2], table[3])
    assert not torch.allclose(table[1], table[2])


def test_item_tower_with_categories_uses_them():
    categories = np.array([[0, 0], [1, 0], [1, 0], [2, 0]], dtype=np.int64)
    model = build_two_tower(ModelConfig(dim=8, item_encoder_options={"use_id": False, "use_categories": True}), 3,
                            ItemInputs(category_ids=categories, num_categories=2))
    table = model.item_table().detach()
    assert torch.allclose(table[1], table[2]) and not torch.allclose(table[1], table[3])


def test_full_softmax_never_predicts_padding_and_prefers_the_right_item():
    table = torch.eye(4) * 5  # item i's vector is the i-th unit vector
    outputs = table[[2, 3]]
    right = full_softmax_loss(outputs, table, torch.tensor([2, 3]))
    wrong = full_softmax_loss(outputs, table, torch.tensor([3, 1]))
    assert right < 0.1 < wrong


def test_sampled_softmax_prefers_the_right_item_and_is_finite():
    torch.manual_seed(0)
    tower = torch.nn.Embedding(11, 10)
    with torch.no_grad():
        tower.weight.copy_(torch.eye(11, 10) * 6)
    targets = torch.tensor([1, 2, 3])
    log_q = torch.log(torch.full((11,), 0.1))
    right = sampled_softmax_loss(tower(targets), tower, targets, log_q, num_uniform_negatives=20)
    wrong = sampled_softmax_loss(tower(torch.tensor([4, 5, 6])), tower, targets, log_q, num_uniform_negatives=20)
    assert torch.isfinite(right) and right < wrong


def test_sampled_softmax_with_every_position_as_negative_is_the_full_in_batch_softmax():
    """Under the in-batch cap every target is a negative: the loss is the classic in-batch
    softmax (positive on the diagonal, other copies of the target masked, logQ corrected)."""
    torch.manual_seed(0)
    tower = torch.nn.Embedding(31, 8)
    outputs = torch.randn(12, 8)
    targets = torch.tensor([1, 2, 3, 3, 5, 8, 13, 21, 2, 30, 7, 7])
    log_q = torch.log_softmax(torch.randn(31), dim=0)
    torch.manual_seed(1)
    loss = sampled_softmax_loss(outputs, tower, targets, log_q, num_uniform_negatives=10)
    torch.manual_seed(1)
    uniform = torch.randint(1, 31, (10,))
    candidates = torch.cat([targets, uniform])
    logits = outputs @ tower(candidates).T - torch.cat([log_q[targets], torch.full((10,), float(np.log(1 / 30)))])
    same = targets[:, None] == candidates[None, :]
    same[:, :12] &= ~torch.eye(12, dtype=torch.bool)
    expected = torch.nn.functional.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(12))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_sampled_softmax_caps_in_batch_negatives_for_long_batches():
    tower = torch.nn.Embedding(101, 8)
    targets = torch.randint(1, 101, (500,))
    log_q = torch.log(torch.full((101,), 0.01))
    loss = sampled_softmax_loss(tower(targets) * 3, tower, targets, log_q, num_uniform_negatives=5,
                                max_in_batch_negatives=64)
    assert torch.isfinite(loss) and loss > 0


def test_next_item_batches_shift_by_one_and_left_pad():
    inputs, labels = next_item_batch([np.array([1, 2, 3, 4]), np.array([7, 8])], max_len=3)
    assert inputs.tolist() == [[1, 2, 3], [0, 0, 7]]
    assert labels.tolist() == [[2, 3, 4], [0, 0, 8]]
    assert left_pad([np.array([5])], 3).tolist() == [[0, 0, 5]]


@pytest.mark.parametrize("style", ["sasrec", "pre_norm"])
def test_both_sasrec_block_styles_are_causal_and_padding_free(style):
    torch.manual_seed(0)
    config = ModelConfig(dim=16, max_len=10, user_encoder_options={"block_style": style})
    model = build_two_tower(config, 30).eval()
    before = model.sequence_outputs(torch.tensor([[1, 2, 3, 4, 5]]))
    after = model.sequence_outputs(torch.tensor([[1, 2, 3, 9, 7]]))
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-5)
    assert torch.allclose(model.user_vectors(torch.tensor([[4, 5, 6]])),
                          model.user_vectors(torch.tensor([[0, 0, 0, 4, 5, 6]])), atol=1e-5)


@pytest.mark.parametrize("encoder, options", [("sasrec", {}), ("sasrec", {"block_style": "pre_norm"}),
                                             ("gru", {}), ("mean", {})])
def test_serving_pass_gives_the_same_vector_and_attribution_as_the_full_pass(encoder, options):
    """Serving runs encode_last (SASRec: only the last query through the last block); users
    must get exactly what the full forward pass gives, padded batch or single history."""
    torch.manual_seed(0)
    config = ModelConfig(user_encoder=encoder, dim=16, max_len=10, user_encoder_options=options)
    model = build_two_tower(config, 30).eval()
    with torch.no_grad():
        for sequences in (torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 7]]),
                          torch.tensor([[6, 1, 2, 9, 3, 8]])):
            vectors, attribution = model.encode_last(model.item_tower(sequences), sequences > 0)
            assert torch.allclose(vectors, model.user_vectors(sequences), atol=1e-5)
            assert torch.allclose(attribution, model.attribution(sequences), atol=1e-5)


def test_a_format_1_model_directory_keeps_its_pre_norm_blocks(tmp_path):
    """Directories written before SASRec's block layout became an option load as trained."""
    import json

    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.models.trained import TrainedModel
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    config = TrainConfig(epochs=1, model={"dim": 16, "max_len": 10,
                                          "user_encoder_options": {"block_style": "pre_norm"}})
    model_dir = train_in_process(generate(SyntheticConfig(num_users=40, num_items=30, num_clusters=3)),
                                 tmp_path / "model", config, log=lambda line: None)
    expected = TrainedModel.load(model_dir).encode_histories([[1, 2, 3]])[0]
    written = json.loads((model_dir / "config.json").read_text())
    written["format"] = 1
    del written["train_config"]["model"]["user_encoder_options"]["block_style"]
    (model_dir / "config.json").write_text(json.dumps(written))
    assert np.allclose(TrainedModel.load(model_dir).encode_histories([[1, 2, 3]])[0], expected, atol=1e-6)


def test_dropout_keeps_one_minus_p_of_the_values_scaled_and_repeats_under_a_seed():
    from rayrec.models.dropout import dropout

    values = torch.ones(200, 500)
    torch.manual_seed(1)
    dropped = dropout(values, 0.3)
    kept = dropped != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert torch.allclose(dropped[kept], torch.full_like(dropped[kept], 1 / 0.7), rtol=1e-4)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.02)  # the expectation is kept
    torch.manual_seed(1)
    assert torch.equal(dropout(values, 0.3), dropped)
    assert not torch.equal(dropout(values, 0.3), dropped)
    assert dropout(values, 0.3, training=False) is values


def test_sasrec_training_pass_with_dropout_stays_causal():
    """Training on the CPU, the attention (with its dropout) is written out, not SDPA's."""
    torch.manual_seed(0)
    model = build_two_tower(ModelConfig(dim=16, max_len=10), 30).train()  # dropout 0.5
    torch.manual_seed(5)
    before = model.sequence_outputs(torch.tensor([[0, 1, 2, 3, 4, 5]]))
    torch.manual_seed(5)
    after = model.sequence_outputs(torch.tensor([[0, 1, 2, 3, 9, 7]]))
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-5)
    assert not torch.allclose(before[:, 4:], after[:, 4:], atol=1e-5)
    torch.manual_seed(6)
    assert not torch.allclose(model.sequence_outputs(torch.tensor([[0, 1, 2, 3, 4, 5]])), before)  # masks differ


@pytest.mark.parametrize("encoder", ["sasrec", "mean"])
def test_validation_scores_equal_the_full_pass_over_max_len_padding(encoder):
    """score_histories pads a batch only to its longest history and runs the serving pass;
    the scores must be those of every position padded to max_len."""
    from rayrec.training.loop import score_histories

    model = make_model(encoder)
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 31, size=n) for n in (1, 3, 7, 12)]  # 12 > max_len 10
    with torch.no_grad():
        full = model.user_vectors(torch.from_numpy(left_pad(histories, 10))) @ model.item_table()[1:].T
    assert np.allclose(score_histories(model, histories, 10), full.numpy(), atol=1e-5)
