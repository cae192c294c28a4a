"""A model directory's user vocabulary as memory-mapped arrays: the same answers as the JSON
vocabulary, shared pages instead of a private list and dict per replica."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from rayrec.models.vocabulary_files import MappedVocabulary, read_vocabulary, write_vocabulary
from rayrec.schema import UNKNOWN_INDEX, Vocabulary

IDS = ["b", "a", "ünï-çødé", "10", "9", "a-much-longer-id-than-the-rest", "ab", "日本"]


def mapped(tmp_path, ids=IDS):
    write_vocabulary(Vocabulary(ids), tmp_path, "user_vocab")
    return read_vocabulary(tmp_path, "user_vocab")


def test_a_mapped_vocabulary_answers_like_the_json_one(tmp_path):
    vocabulary, plain = mapped(tmp_path), Vocabulary(IDS)
    assert isinstance(vocabulary, MappedVocabulary) and isinstance(vocabulary._array, np.memmap)
    assert json.loads((tmp_path / "user_vocab.json").read_text()) == IDS  # still the format of record
    assert len(vocabulary) == len(IDS) and list(vocabulary) == IDS and vocabulary.ids == IDS
    assert vocabulary.ids[2] == "ünï-çødé" and vocabulary.ids[-1] == "日本" and vocabulary.ids[1:3] == IDS[1:3]
    for index, item_id in enumerate(IDS):
        assert vocabulary.index_of(item_id) == plain.index_of(item_id) == index
        assert item_id in vocabulary and item_id in vocabulary.ids
    # Not ids: prefixes, extensions, longer than any id, empty, not a string.
    for stranger in ("", "a-much", "abc", "a-much-longer-id-than-the-rest-and-more", "1", "日", None):
        assert vocabulary.index_of(stranger) is None and stranger not in vocabulary
    queried = ["9", "nope", "日本", "", "b"]
    assert vocabulary.encode(queried, unknown="mark").tolist() == plain.encode(queried, unknown="mark").tolist()
    assert vocabulary.encode(queried, unknown="mark").tolist() == [4, UNKNOWN_INDEX, 7, UNKNOWN_INDEX, 0]
    with pytest.raises(KeyError, match="unknown id 'nope'"):
        vocabulary.encode(["b", "nope"])
    assert vocabulary.decode([7, 0, 2]) == ["日本", "b", "ünï-çødé"] and vocabulary.decode([]) == []
    assert vocabulary.decode(np.array([5])) == ["a-much-longer-id-than-the-rest"]


def test_a_mapped_vocabulary_is_read_only_and_says_how_to_extend_it(tmp_path):
    vocabulary = mapped(tmp_path)
    assert vocabulary.add("a") == 1  # known ids keep their index, as Vocabulary.add does
    with pytest.raises(TypeError, match=r"read-only: Vocabulary\(vocab.ids\)"):
        vocabulary.add("new")
    extended = Vocabulary(vocabulary.ids)
    assert extended.add("new") == len(IDS)
    vocabulary.save(tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text()) == IDS


@pytest.mark.parametrize("awkward", ["", "ends-with-nul\0", "x" * 300])
def test_ids_the_arrays_cannot_hold_keep_the_vocabulary_json_only(tmp_path, awkward):
    write_vocabulary(Vocabulary(["ok", "fine"]), tmp_path, "user_vocab")  # arrays of an earlier export
    vocabulary = mapped(tmp_path, ["ok", awkward, "fine"])
    assert type(vocabulary) is Vocabulary and vocabulary.index_of(awkward) == 1
    assert not list(tmp_path.glob("user_vocab.*.npy"))  # no stale arrays left to disagree with the JSON


def test_a_million_mapped_ids_cost_a_process_almost_nothing_of_its_own(tmp_path):
    ids = [f"user-{i}" for i in range(1_000_000)]
    write_vocabulary(Vocabulary(ids), tmp_path, "user_vocab")
    del ids
    tracemalloc.start()
    vocabulary = read_vocabulary(tmp_path, "user_vocab")
    found = [vocabulary.index_of(f"user-{i}") for i in (0, 999_999, 123_456)]
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert found == [0, 999_999, 123_456] and vocabulary.ids[424_242] == "user-424242"
    # The JSON vocabulary's list and dict of a million ids take ~120 MB in every process.
    assert allocated < 2**20
