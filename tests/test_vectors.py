"""The FAISS vector index: search, removal, snapshots, for exact and HNSW search."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from index.vectors import VectorIndex


def unit_vectors(count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, 64)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_remove_snapshot_and_rebuild(kind, tmp_path):
    index = VectorIndex(64, kind)
    vectors = unit_vectors(500)
    ids = [secrets.token_hex(16) for _ in range(500)]
    index.add_many("profile-a", ids, vectors)
    assert len(index) == 500
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
    import index.vectors as vectors_module

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

    import index.vectors as vectors_module

    index = VectorIndex(8, "flat")
    index.add("p", "a" * 32, np.eye(8, dtype=np.float32)[0])
    entered, release = threading.Event(), threading.Event()
    serialize = vectors_module.faiss.serialize_index

    def slow_serialize(faiss_index):
        entered.set()
        release.wait(30)
        return serialize(faiss_index)

    monkeypatch.setattr(vectors_module.faiss, "serialize_index", slow_serialize)
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
