"""A state store's event log as training data: ``--interactions sqlite:///...`` or
``redis://...``, alone or next to files, with erased users dropped from every input.

Real parts only: a SQLite state file, a private redis-server (``rayrec.testing.RedisServer``),
the CLI in process and the model directory it writes.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner

from rayrec.cli import cli
from rayrec.components import FeedbackEvent
from rayrec.models.servable import load_model_dir
from rayrec.state import open_state_store
from rayrec.training.config import load_train_config
from rayrec.training.prepare import load_training_data

#: Every user's training file history: four items, a minute apart.
FILE_USERS = {"alice": ["i1", "i2", "i3", "i4"], "bob": ["i2", "i3", "i5", "i6"], "carol": ["i1", "i5", "i6", "i7"]}


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "data.csv"
    lines = ["user_id,item_id,timestamp"]
    for user, items in FILE_USERS.items():
        lines += [f"{user},{item},{1_700_000_000 + 60 * n}" for n, item in enumerate(items)]
    path.write_text("\n".join(lines) + "\n")
    return path


def send(store, user, items, start, kind="click"):
    """What POST /feedback stores: events with ids, a second apart from ``start``."""
    store.append_events([FeedbackEvent(user_id=user, item_id=item, event_type=kind, timestamp=start + n,
                                       event_id=f"{user}-{item}-{kind}-{start + n}") for n, item in enumerate(items)],
                        dislike_types={"dislike"})


def fill(store):
    """Feedback after the file: alice reads on, dave is new, bob reads more and is then erased."""
    send(store, "alice", ["i8", "i9"], 1_800_000_000)
    send(store, "dave", ["i9", "i8", "i3"], 1_800_000_000)
    send(store, "bob", ["i7", "i8"], 1_800_000_000)
    store.erase_user("bob")


def histories(data):
    return {user: data.item_vocab.decode(list(seq - 1)) for user, seq in zip(data.user_vocab.ids, data.sequences)}


def test_training_on_a_file_and_a_sqlite_store_drops_the_erased_user_everywhere(tmp_path, data_csv):
    state = tmp_path / "state.db"
    store = open_state_store(f"sqlite:///{state}")
    fill(store)
    store.close()
    model = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "--interactions", str(data_csv), "--interactions", f"sqlite:///{state}",
                                      "--out", str(model), "--epochs", "1", "--in-process"])
    assert result.exit_code == 0, result.output
    assert "dropped 4 rows of erased users" in result.output  # bob's file rows; the store deleted his events
    trained = load_model_dir(model)
    assert sorted(trained.user_vocab.ids) == ["alice", "carol", "dave"]  # the next model does not know bob
    assert trained.training_history("alice") == ["i1", "i2", "i3", "i4", "i8", "i9"]  # file, then feedback
    assert trained.training_history("dave") == ["i9", "i8", "i3"]


def test_the_event_log_alone_is_training_data(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    store = open_state_store(url)
    fill(store)
    store.close()
    data = load_training_data([url], None, None, load_train_config(None), echo=lambda line: None)
    assert histories(data) == {"alice": ["i8", "i9"], "dave": ["i9", "i8", "i3"]}


def test_the_union_keeps_an_event_in_both_inputs_once_and_follows_dislikes(tmp_path, data_csv):
    url = f"sqlite:///{tmp_path}/state.db"
    store = open_state_store(url)
    send(store, "carol", ["i7"], 1_700_000_000 + 180)  # exactly carol's last file row, fed back too
    send(store, "carol", ["i2"], 1_800_000_000, kind="skip")  # seen and skipped: no interaction
    send(store, "alice", ["i3"], 1_800_000_000, kind="dislike")  # serving drops i3 from her sequence for good
    store.close()
    lines = []
    data = load_training_data([str(data_csv), url], None, None, load_train_config(None), echo=lines.append)
    assert histories(data)["carol"] == ["i1", "i5", "i6", "i7"]
    assert histories(data)["alice"] == ["i1", "i2", "i4"]
    report = "\n".join(lines)
    assert "dropped 1 exact duplicate rows" in report
    assert "left out 2 logged events that are no interaction" in report
    assert "dropped 1 rows of items their user disliked" in report


def test_the_ignored_and_dislike_types_are_servings_zero_and_negative_weights():
    from rayrec.serving.config import DEFAULT_EVENT_WEIGHTS
    from rayrec.state.event_log import EventLogSource

    options = EventLogSource.Options()
    assert set(options.ignored_event_types) == {kind for kind, w in DEFAULT_EVENT_WEIGHTS.items() if w == 0}
    assert set(options.dislike_event_types) == {kind for kind, w in DEFAULT_EVENT_WEIGHTS.items() if w < 0}


def test_a_missing_state_file_is_one_line_and_creates_nothing(tmp_path, data_csv):
    missing = tmp_path / "no-such.db"
    result = subprocess.run([sys.executable, "-m", "rayrec", "train", "--interactions", str(data_csv),
                             "--interactions", f"sqlite:///{missing}", "--out", str(tmp_path / "model"), "--in-process"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing) in lines[0] and "no state store file" in lines[0]
    assert not missing.exists()


def test_training_on_a_file_and_a_redis_store_drops_the_erased_user_everywhere(redis_server, data_csv):
    url = f"{redis_server.url}?prefix=events-{uuid.uuid4().hex[:8]}:"
    store = open_state_store(url)
    fill(store)
    store.close()
    lines = []
    data = load_training_data([str(data_csv), url], None, None, load_train_config(None), echo=lines.append)
    found = histories(data)
    assert sorted(found) == ["alice", "carol", "dave"]
    assert found["alice"] == ["i1", "i2", "i3", "i4", "i8", "i9"] and found["dave"] == ["i9", "i8", "i3"]
    assert any("dropped 4 rows of erased users" in line for line in lines)
