"""The FAISS vector index: search, removal, snapshots, for exact, HNSW and inverted-file search."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from earmark.index.vectors import VectorIndex


def unit_vectors(count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, 64)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def small_ivf(monkeypatch):
    """Inverted files trained from a few hundred vectors (10,000 in service), so that the
    tests exercise real trained IVF-SQ8 indexes in milliseconds."""
    import earmark.index.vectors as vectors_module

    monkeypatch.setattr(vectors_module, "IVF_MIN_ROWS", 200)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_remove_snapshot_and_rebuild(kind, tmp_path, small_ivf):
    index = VectorIndex(64, kind)
    vectors = unit_vectors(500)
    ids = [secrets.token_hex(16) for _ in range(500)]
    index.add_many("profile-a", ids, vectors)
    assert len(index) == 500 and index._profiles["profile-a"].kind == kind
    assert index.search("profile-a", vectors[7], 1)[0][0] == ids[7]
    assert index.search("profile-b", vectors[7], 1) == []  # profiles never mix

    assert index.remove(ids[7]) and not index.remove(ids[7])
    assert all(hit != ids[7] for hit, _ in index.search("profile-a", vectors[7], 10))
    assert len(index) == 499

    index.save(tmp_path, "1700000000000-3", "ehash-v1")
    loaded = VectorIndex(64, kind)
    assert loaded.load(tmp_path, "ehash-v1") == "1700000000000-3"
    assert loaded.search("profile-a", vectors[9], 1)[0][0] == ids[9]
    assert all(hit != ids[7] for hit, _ in loaded.search("profile-a", vectors[7], 10))
    assert VectorIndex(64, kind).load(tmp_path, "another-version") is None

    index.rebuild()
    assert index.tombstones == 0 and len(index) == 499
    assert index.search("profile-a", vectors[11], 1)[0][0] == ids[11]


def test_auto_switches_to_hnsw_when_large(monkeypatch):
    import earmark.index.vectors as vectors_module

    monkeypatch.setattr(vectors_module, "AUTO_HNSW_FROM", 100)
    index = VectorIndex(64, "auto")
    vectors = unit_vectors(150, seed=1)
    ids = [secrets.token_hex(16) for _ in range(150)]
    index.add_many("p", ids[:50], vectors[:50])
    index.add_many("p", ids[50:], vectors[50:])
    assert index.needs_rebuild()
    index.rebuild()
    assert not index.needs_rebuild()
    assert index.search("p", vectors[120], 1)[0][0] == ids[120]


def test_searches_go_on_while_a_snapshot_is_serialised(tmp_path, monkeypatch):
    import threading

    import earmark.index.vectors as vectors_module

    index = VectorIndex(8, "flat")
    index.add("p", "a" * 32, np.eye(8, dtype=np.float32)[0])
    entered, release = threading.Event(), threading.Event()
    write_index = vectors_module.faiss.write_index

    def slow_write_index(faiss_index, path):
        entered.set()
        release.wait(30)
        return write_index(faiss_index, path)

    monkeypatch.setattr(vectors_module.faiss, "write_index", slow_write_index)
    saver = threading.Thread(target=index.save, args=(tmp_path, "1-0", "v"))
    saver.start()
    assert entered.wait(10)
    found: list = []
    searcher = threading.Thread(target=lambda: found.extend(index.search("p", np.eye(8, dtype=np.float32)[0], 1)))
    searcher.start()
    searcher.join(10)
    finished = not searcher.is_alive()
    release.set()
    saver.join(10)
    assert finished and found and found[0][0] == "a" * 32  # the search did not wait for the snapshot


def test_a_snapshot_is_the_index_as_the_save_began(tmp_path, monkeypatch):
    """A remove during a save (it takes only the search lock) and an add (it waits for the
    FAISS write) change the live index, not the snapshot being written: the snapshot is the
    index at the stream offset it is saved with, and later events are replayed on top of it."""
    import threading

    import earmark.index.vectors as vectors_module

    index = VectorIndex(64, "flat")
    vectors = unit_vectors(20, seed=3)
    ids = [secrets.token_hex(16) for _ in range(20)]
    index.add_many("p", ids[:19], vectors[:19])
    entered, release = threading.Event(), threading.Event()
    write_index = vectors_module.faiss.write_index

    def slow_write_index(faiss_index, path):
        entered.set()
        release.wait(30)
        return write_index(faiss_index, path)

    monkeypatch.setattr(vectors_module.faiss, "write_index", slow_write_index)
    saver = threading.Thread(target=index.save, args=(tmp_path, "5-0", "v"))
    saver.start()
    assert entered.wait(10)
    assert index.remove(ids[0])  # does not wait for the snapshot
    adder = threading.Thread(target=index.add, args=("p", ids[19], vectors[19]))
    adder.start()
    release.set()
    saver.join(10)
    adder.join(10)
    assert not saver.is_alive() and not adder.is_alive()

    assert len(index) == 19 and ids[0] not in index.entry_ids() and ids[19] in index.entry_ids()
    loaded = VectorIndex(64, "flat")
    assert loaded.load(tmp_path, "v") == "5-0"
    assert sorted(loaded.entry_ids()) == sorted(ids[:19])
    assert loaded.search("p", vectors[0], 1)[0][0] == ids[0]
    assert all(hit != ids[19] for hit, _ in loaded.search("p", vectors[19], 20))


def test_size_is_read_without_waiting_for_the_index_lock():
    """/health and /metrics read len(index); a long holder of the lock must not stall them."""
    import threading

    index = VectorIndex(64, "flat")
    index.add_many("p", [secrets.token_hex(16) for _ in range(3)], unit_vectors(3))
    sizes: list[int] = []
    with index._lock:
        reader = threading.Thread(target=lambda: sizes.append(len(index)))
        reader.start()
        reader.join(10)
        answered = not reader.is_alive()
    reader.join(10)
    assert answered and sizes == [3]


def test_re_adds_removals_and_tombstones_survive_a_snapshot(tmp_path):
    index = VectorIndex(64, "hnsw")
    vectors = unit_vectors(60, seed=4)
    ids = [secrets.token_hex(16) for _ in range(50)]
    index.add_many("p", ids, vectors[:50])
    index.add("p", ids[3], vectors[55])  # a re-add moves the entry to its new vector
    index.remove(ids[4])
    index.add_many("q", ids[40:45], vectors[50:55])  # the same entries in another profile
    index.save(tmp_path, "9-1", "v")
    loaded = VectorIndex(64, "hnsw")
    assert loaded.load(tmp_path, "v") == "9-1"
    assert len(loaded) == len(index) == 54 and loaded.tombstones == index.tombstones == 1
    assert loaded.search("p", vectors[55], 1)[0][0] == ids[3]
    assert all(hit != ids[4] for hit, _ in loaded.search("p", vectors[4], 10))
    assert loaded.search("q", vectors[52], 1)[0][0] == ids[42]
    loaded.rebuild()
    assert loaded.tombstones == 0 and len(loaded) == 54
    assert loaded.search("p", vectors[55], 1)[0][0] == ids[3]


def test_a_version_1_snapshot_still_loads_and_the_next_save_replaces_it(tmp_path):
    """Snapshots written before version 2 (one pickle: FAISS blob, id dict, tombstones)."""
    import json
    import pickle

    import faiss

    from earmark.index.vectors import vector_id

    vectors = unit_vectors(10, seed=5)
    ids = [secrets.token_hex(16) for _ in range(10)]
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(64))
    flat.add_with_ids(vectors, np.array([vector_id(e) for e in ids], dtype=np.int64))
    entry_ids = {vector_id(e): e for e in ids[1:]}  # ids[0] was removed: a tombstone
    state = {"p": ("flat", faiss.serialize_index(flat), entry_ids, {vector_id(ids[0])})}
    (tmp_path / "index.pkl").write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    (tmp_path / "meta.json").write_text(json.dumps({"version": 1, "dim": 64, "stream_offset": "3-0",
                                                    "fingerprint_version": "v", "entries": 9}))
    index = VectorIndex(64, "flat")
    assert index.load(tmp_path, "v") == "3-0"
    assert len(index) == 9 and index.tombstones == 1
    assert index.search("p", vectors[5], 1)[0][0] == ids[5]
    assert all(hit != ids[0] for hit, _ in index.search("p", vectors[0], 10))

    index.save(tmp_path, "4-0", "v")
    assert not (tmp_path / "index.pkl").exists()
    again = VectorIndex(64, "flat")
    assert again.load(tmp_path, "v") == "4-0" and sorted(again.entry_ids()) == sorted(ids[1:])


def test_a_damaged_snapshot_is_not_used(tmp_path):
    index = VectorIndex(64, "flat")
    index.add_many("p", [secrets.token_hex(16) for _ in range(5)], unit_vectors(5))
    index.save(tmp_path, "1-0", "v")
    folder = next(tmp_path.glob("snapshot-*"))
    (folder / "0.faiss").write_bytes(b"not an index")
    assert VectorIndex(64, "flat").load(tmp_path, "v") is None
    (folder / "0.faiss").unlink()
    assert VectorIndex(64, "flat").load(tmp_path, "v") is None


def _change_during_the_next_build(monkeypatch, index: VectorIndex, new_ids: list[str], new_vectors: np.ndarray,
                                  re_added: tuple[str, np.ndarray], removed: str) -> None:
    """While the next rebuild builds its new index (without the lock): new entries added, one
    re-added with another vector, one removed."""
    new_part = index._new_part

    def new_part_with_changes(expected, vectors_now=None):
        monkeypatch.setattr(index, "_new_part", new_part)  # once
        index.add_many("p", new_ids, new_vectors)
        index.add("p", *re_added)
        index.remove(removed)
        return new_part(expected, vectors_now)

    monkeypatch.setattr(index, "_new_part", new_part_with_changes)


def test_a_rebuild_keeps_what_changed_while_it_built(monkeypatch):
    """rebuild() builds without the lock; adds, re-adds and removals meanwhile are kept."""
    index = VectorIndex(64, "hnsw")
    vectors = unit_vectors(40, seed=6)
    ids = [secrets.token_hex(16) for _ in range(35)]
    index.add_many("p", ids[:30], vectors[:30])
    _change_during_the_next_build(monkeypatch, index, ids[30:35], vectors[30:35], (ids[2], vectors[39]), ids[5])
    index.rebuild()
    assert len(index) == 34 and index.tombstones == 1  # the removal came after the graph was built
    assert index.search("p", vectors[32], 1)[0][0] == ids[32]
    assert index.search("p", vectors[39], 1)[0][0] == ids[2]
    assert all(hit != ids[5] for hit, _ in index.search("p", vectors[5], 10))


def test_saves_running_at_once_leave_one_whole_snapshot(tmp_path):
    """Each save deletes the snapshots it supersedes; two at once must not delete each other's."""
    import threading

    index = VectorIndex(64, "hnsw")
    ids = [secrets.token_hex(16) for _ in range(300)]
    index.add_many("p", ids, unit_vectors(300, seed=7))
    savers = [threading.Thread(target=index.save, args=(tmp_path, f"{n}-0", "v")) for n in range(4)]
    for saver in savers:
        saver.start()
    for saver in savers:
        saver.join(30)
    assert len(list(tmp_path.glob("snapshot-*"))) == 1
    loaded = VectorIndex(64, "hnsw")
    assert loaded.load(tmp_path, "v") in {f"{n}-0" for n in range(4)}
    assert sorted(loaded.entry_ids()) == sorted(ids)


def test_auto_moves_a_large_profile_to_an_inverted_file_that_survives_a_snapshot(tmp_path, monkeypatch, small_ivf):
    import earmark.index.vectors as vectors_module

    monkeypatch.setattr(vectors_module, "AUTO_HNSW_FROM", 100)
    monkeypatch.setattr(vectors_module, "AUTO_IVF_FROM", 300)
    rebuilt: list[tuple[str, str]] = []
    index = VectorIndex(64, "auto", on_rebuild=lambda reason, kind: rebuilt.append((reason, kind)))
    vectors = unit_vectors(400, seed=2)
    ids = [secrets.token_hex(16) for _ in range(400)]
    index.add_many("p", ids[:150], vectors[:150])
    index.rebuild()
    assert index._profiles["p"].kind == "hnsw" and not index.needs_rebuild()
    index.add_many("p", ids[150:], vectors[150:])
    assert index.needs_rebuild()
    index.rebuild()
    part = index._profiles["p"]
    assert part.kind == "ivf" and part.trained_rows == 400 and not index.needs_rebuild()
    assert rebuilt == [("requested", "hnsw"), ("kind", "ivf")]  # what earmark_index_rebuilds_total counts
    # Every entry is found by its own vector, from the 8-bit codes the lists hold.
    assert all(index.search("p", vectors[i], 1)[0][0] == ids[i] for i in range(0, 400, 7))

    index.remove(ids[3])
    index.add("p", ids[4], vectors[399] * -1.0)  # re-added with another vector
    index.save(tmp_path, "1700000000000-9", "ehash-v1")
    loaded = VectorIndex(64, "auto")
    assert loaded.load(tmp_path, "ehash-v1") == "1700000000000-9"
    again = loaded._profiles["p"]
    assert again.kind == "ivf" and again.trained_rows == 400 and again.stale == 2 and len(loaded) == 399
    assert all(hit != ids[3] for hit, _ in loaded.search("p", vectors[3], 10))
    assert loaded.search("p", -vectors[399], 1)[0][0] == ids[4]
    assert all(hit != ids[4] for hit, _ in loaded.search("p", vectors[4], 3))


def test_an_inverted_file_drops_dead_rows_in_place_and_finds_live_ones_behind_them(tmp_path, small_ivf):
    rebuilt: list[tuple[str, str]] = []
    index = VectorIndex(64, "ivf", on_rebuild=lambda reason, kind: rebuilt.append((reason, kind)))
    vectors = unit_vectors(1500, seed=3)
    # Twenty copies of one vector, nearly the same: after eighteen are removed, a search for it
    # must still return the two left, however many dead rows rank above them.
    near = vectors[0] + 0.01 * unit_vectors(20, seed=4)
    vectors[:20] = near / np.linalg.norm(near, axis=1, keepdims=True)
    ids = [secrets.token_hex(16) for _ in range(1500)]
    index.add_many("p", ids, vectors)
    assert index._profiles["p"].kind == "ivf"
    for entry_id in ids[:18]:
        index.remove(entry_id)
    assert {hit for hit, _ in index.search("p", vectors[0], 2)} == set(ids[18:20])

    for entry_id in ids[20:1020]:  # past max(1000, live / 10) dead rows: purged, not rebuilt
        index.remove(entry_id)
    part = index._profiles["p"]
    assert index.needs_rebuild() and part.stale == 1018
    index.rebuild()
    assert index._profiles["p"] is part and part.index.ntotal == 482 and part.stale == 0 and not index.needs_rebuild()
    assert rebuilt == [("purge", "ivf")]
    assert index.search("p", vectors[1400], 1)[0][0] == ids[1400] and len(index) == 482

    index.save(tmp_path, "1700000000000-10", "ehash-v1")  # fewer vectors than rows: still loads
    loaded = VectorIndex(64, "ivf")
    assert loaded.load(tmp_path, "ehash-v1") == "1700000000000-10" and len(loaded) == 482
    assert loaded.search("p", vectors[1100], 1)[0][0] == ids[1100]


def test_an_inverted_file_is_retrained_with_more_lists_as_it_grows(small_ivf):
    import earmark.index.vectors as vectors_module

    index = VectorIndex(64, "ivf")
    vectors = unit_vectors(4000, seed=5)
    ids = [secrets.token_hex(16) for _ in range(4000)]
    index.add_many("p", ids[:250], vectors[:250])
    lists = index._profiles["p"].index.nlist
    index.add_many("p", ids[250:], vectors[250:])
    assert index.needs_rebuild()
    index.rebuild()
    part = index._profiles["p"]
    assert part.trained_rows == 4000 and part.index.nlist == vectors_module._lists_for(4000) > lists
    assert all(index.search("p", vectors[i], 1)[0][0] == ids[i] for i in range(0, 4000, 97))


def test_an_inverted_file_waits_for_enough_vectors_to_train_on(small_ivf):
    index = VectorIndex(64, "ivf")
    vectors = unit_vectors(300, seed=7)
    ids = [secrets.token_hex(16) for _ in range(300)]
    index.add_many("p", ids[:50], vectors[:50])
    assert index._profiles["p"].kind == "flat" and not index.needs_rebuild()
    index.add_many("p", ids[50:], vectors[50:])
    assert index.needs_rebuild()
    index.rebuild()
    assert index._profiles["p"].kind == "ivf" and index.search("p", vectors[123], 1)[0][0] == ids[123]


def test_the_row_map_agrees_with_a_dict_through_adds_re_adds_removals_and_compactions(monkeypatch):
    """The vid -> row map kept as sorted arrays plus recent changes (a dict of 10M vids costs
    about 750 MB) answers as a plain dict would, across its compactions."""
    from earmark.index.vectors import _RowMap

    monkeypatch.setattr(_RowMap, "COMPACT_FROM", 16)
    rng = np.random.default_rng(8)
    vids = rng.integers(0, 2**60, size=200)
    mapped = _RowMap.of(vids[:100], np.arange(100))
    model = {int(v): r for r, v in enumerate(vids[:100].tolist())}
    next_row = 100
    for _ in range(3000):
        vid = int(rng.choice(vids))
        if rng.random() < 0.55:
            mapped.set(vid, next_row)
            model[vid] = next_row
            next_row += 1
        else:
            assert mapped.pop(vid) == model.pop(vid, None)
        assert mapped.get(vid) == model.get(vid) and len(mapped) == len(model)
    assert all(mapped.get(int(v)) == model.get(int(v)) for v in vids)
    assert mapped.contains_many(vids).tolist() == [int(v) in model for v in vids]


def test_an_inverted_file_retrained_keeps_what_changed_while_it_trained(monkeypatch, small_ivf):
    """The retraining builds without the lock; what was added (read back from the old lists),
    re-added and removed meanwhile is kept."""
    index = VectorIndex(64, "ivf")
    vectors = unit_vectors(1100, seed=9)
    ids = [secrets.token_hex(16) for _ in range(1010)]
    index.add_many("p", ids[:250], vectors[:250])
    index.add_many("p", ids[250:1000], vectors[250:1000])
    assert index.needs_rebuild() and index._profiles["p"].kind == "ivf"
    _change_during_the_next_build(monkeypatch, index, ids[1000:1010], vectors[1000:1010], (ids[2], vectors[1099]), ids[5])
    index.rebuild()
    part = index._profiles["p"]
    assert part.kind == "ivf" and part.trained_rows == 1000 and len(index) == 1009
    assert index.search("p", vectors[1005], 1)[0][0] == ids[1005]
    assert index.search("p", vectors[1099], 1)[0][0] == ids[2]
    assert all(hit != ids[5] for hit, _ in index.search("p", vectors[5], 10))
