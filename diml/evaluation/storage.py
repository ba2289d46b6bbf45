"""Embeddings of an evaluation on disk (Parquet), so a run can be re-scored later without the model.

Layout: one row per image with columns ``label`` (int64), ``global`` (fixed-size list of D float32) and, when
present, ``local`` (fixed-size list of D * R float32, the ``(D, R)`` cell matrix in row-major order). The schema
metadata key ``diml.embeddings`` holds JSON: ``{"format": 1, "global_dim": D, "local_shape": [D, R] | null,
"metadata": {...}}``. Embeddings are stored as float32 whatever their input dtype.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from diml.evaluation._inputs import as_tensor

FORMAT_VERSION = 1
SCHEMA_KEY = b"diml.embeddings"


class EmbeddingSet(NamedTuple):
    """Embeddings and labels of a set of images, in dataset order (CPU tensors).

    Fields: ``global_emb (N, D)`` float32, ``labels (N,)`` int64, ``local_emb (N, D, R)`` float32 or None,
    ``metadata`` a JSON-serialisable dict (e.g. run id, dataset, split, epoch).
    """

    global_emb: torch.Tensor
    labels: torch.Tensor
    local_emb: torch.Tensor | None
    metadata: dict[str, Any]


def _fixed_lists(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A ``(N, W)`` float32 matrix as a Parquet-friendly fixed-size list column (no copy)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def save_embeddings(path, global_emb, labels, local_emb=None, metadata: dict | None = None) -> None:
    """Write an evaluation's embeddings to a Parquet file (see the module docstring for the layout).

    Args:
        path: file to write (its folder must exist).
        global_emb: ``(N, D)`` tensor or array.
        labels: ``(N,)`` integer labels.
        local_emb: ``(N, D, R)`` cell embeddings, or None.
        metadata: JSON-serialisable dict stored with the file.
    """
    glob = as_tensor(global_emb, "global_emb").cpu().float().numpy()
    labs = as_tensor(labels, "labels").cpu()
    if glob.ndim != 2:
        raise ValueError(f"global_emb must be (N, D), got shape {glob.shape}")
    if labs.ndim != 1 or labs.shape[0] != glob.shape[0] or labs.is_floating_point():
        raise ValueError(f"labels must be (N,) integers with N = {glob.shape[0]}, got {labs.dtype} {tuple(labs.shape)}")
    columns = {"label": pa.array(labs.to(torch.int64).numpy()), "global": _fixed_lists(glob)}
    local_shape = None
    if local_emb is not None:
        loc = as_tensor(local_emb, "local_emb").cpu().float().numpy()
        if loc.ndim != 3 or loc.shape[:2] != glob.shape:
            raise ValueError(f"local_emb must be (N, D, R) = {glob.shape + ('R',)}, got shape {loc.shape}")
        local_shape = list(loc.shape[1:])
        columns["local"] = _fixed_lists(np.ascontiguousarray(loc).reshape(loc.shape[0], -1))
    try:
        header = json.dumps({"format": FORMAT_VERSION, "global_dim": glob.shape[1], "local_shape": local_shape,
                             "metadata": dict(metadata or {})})
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {error}") from None
    table = pa.table(columns).replace_schema_metadata({SCHEMA_KEY: header.encode()})
    pq.write_table(table, os.fspath(path))


def _matrix(table: pa.Table, name: str, width: int) -> np.ndarray:
    column = table.column(name).combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.require(values, requirements="W").reshape(len(column), width)


def load_embeddings(path) -> EmbeddingSet:
    """Read a file written by :func:`save_embeddings`.

    Returns:
        :class:`EmbeddingSet` with CPU tensors in the saved order.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {path!r} does not exist: write it first with save_embeddings")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(SCHEMA_KEY)
    if raw is None:
        raise ValueError(f"path {path!r} is a Parquet file without DIML embeddings metadata: "
                         "write it with diml.evaluation.save_embeddings")
    header = json.loads(raw)
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"path {path!r} has embeddings format {header.get('format')}, this code reads "
                         f"{FORMAT_VERSION}: re-save it with this version")
    glob = _matrix(table, "global", header["global_dim"])
    local = None
    if header["local_shape"] is not None:
        dim, cells = header["local_shape"]
        local = torch.from_numpy(_matrix(table, "local", dim * cells).reshape(-1, dim, cells))
    labels = torch.from_numpy(np.require(table.column("label").to_numpy(), np.int64, "W"))
    return EmbeddingSet(torch.from_numpy(glob), labels, local, header["metadata"])
