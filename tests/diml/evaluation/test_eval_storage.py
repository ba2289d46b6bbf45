"""Parquet round trip of evaluation embeddings."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diml.evaluation import evaluate, load_embeddings, save_embeddings


def _set(n=37, dim=6, cells=4):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=gen), torch.randint(0, 5, (n,), generator=gen) * 11, \
        torch.randn(n, dim, cells, generator=gen)


def test_round_trip_with_cells_and_metadata(tmp_path):
    glob, labels, local = _set()
    meta = {"run_id": "abc", "epoch": 3, "grid": [2, 2]}
    save_embeddings(tmp_path / "e.parquet", glob, labels, local, metadata=meta)
    loaded = load_embeddings(tmp_path / "e.parquet")
    assert torch.equal(loaded.global_emb, glob) and loaded.global_emb.dtype == torch.float32
    assert torch.equal(loaded.labels, labels) and loaded.labels.dtype == torch.int64
    assert torch.equal(loaded.local_emb, local)
    assert loaded.metadata == meta
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.num_rows == 37 and table.column_names == ["label", "global", "local"]


def test_round_trip_without_cells_from_numpy_half(tmp_path):
    glob, labels, _ = _set()
    save_embeddings(str(tmp_path / "g.parquet"), glob.half().numpy(), labels.numpy())
    loaded = load_embeddings(str(tmp_path / "g.parquet"))
    assert loaded.local_emb is None and loaded.metadata == {}
    assert torch.equal(loaded.global_emb, glob.half().float())


def test_loaded_set_re_scores_identically(tmp_path):
    glob, labels, local = _set()
    cell_dot = lambda q, qg, c, cg: torch.einsum("bcr,bkcr->bk", q, c)  # noqa: E731
    save_embeddings(tmp_path / "e.parquet", glob, labels, local)
    loaded = load_embeddings(tmp_path / "e.parquet")
    before = evaluate(glob, labels, local, depths=(3, 9), candidate_similarity=cell_dot)
    after = evaluate(loaded.global_emb, loaded.labels, loaded.local_emb, depths=(3, 9), candidate_similarity=cell_dot)
    assert before == after


def test_errors(tmp_path):
    glob, labels, local = _set()
    with pytest.raises(FileNotFoundError, match="path"):
        load_embeddings(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="without DIML embeddings metadata"):
        load_embeddings(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_embeddings(tmp_path / "x.parquet", glob, labels, metadata={"t": torch.zeros(1)})
    with pytest.raises(ValueError, match="labels must be"):
        save_embeddings(tmp_path / "x.parquet", glob, labels[:-1])
    with pytest.raises(ValueError, match="local_emb must be"):
        save_embeddings(tmp_path / "x.parquet", glob, labels, local[:, :-1])
