"""The explanation of one structural similarity, as plain data: the plan, the cell similarities, the part-wise
contributions, both images' cell weights and the top matched cell pairs. Serialisable to JSON and back exactly.

With ``R = grid * grid`` cells (row-major: cell ``r`` is row ``r // grid``, column ``r % grid``), the structural
similarity of DIML (Zhao et al., ICCV 2021, eq. 4) is the sum of the part-wise contributions

.. math::
    s(x, y) = \\sum_{i, j} T_{ij} S_{ij},

where ``S_ij`` is the cosine of query cell ``i`` and reference cell ``j`` and ``T`` the optimal (entropic) transport
plan between the query cell weights ``a`` (rows) and the reference cell weights ``b`` (columns).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

FORMAT_VERSION = 1


class CellPair(NamedTuple):
    """One matched pair of cells, ranked by contribution (``rank`` 1 is the largest).

    ``query_rc`` / ``ref_rc`` are ``(row, col)`` of the cells; ``transport`` is ``T_ij``, ``cell_similarity``
    ``S_ij``, ``contribution`` ``T_ij * S_ij`` and ``share`` the contribution divided by the total similarity (None when
    the total is 0).
    """

    rank: int
    query_cell: int
    ref_cell: int
    query_rc: tuple[int, int]
    ref_rc: tuple[int, int]
    transport: float
    cell_similarity: float
    contribution: float
    share: float | None


def _square(name: str, value, size: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (size, size):
        raise ValueError(f"{name} must have shape (R, R) = ({size}, {size}), got {array.shape}")
    return array


def _weights(name: str, value, grid: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape == (grid, grid):
        array = array.reshape(-1)
    if array.shape != (grid * grid,):
        raise ValueError(f"{name} must have R = {grid * grid} entries (or shape ({grid}, {grid})), got {array.shape}")
    return array


def top_pairs(plan: np.ndarray, cell_sim: np.ndarray, grid: int, top: int, total: float) -> tuple[CellPair, ...]:
    """The ``top`` cell pairs with the largest contributions ``T_ij * S_ij``.

    Args:
        plan, cell_sim: ``(R, R)`` float64.
        grid: cells per side (``R = grid * grid``).
        top: pairs to keep (at most ``R * R``).
        total: the similarity the shares are relative to.
    """
    contributions = plan * cell_sim
    flat = contributions.reshape(-1)
    count = min(int(top), flat.size)
    order = np.argsort(-flat, kind="stable")[:count]
    pairs = []
    for rank, k in enumerate(order.tolist(), start=1):
        i, j = divmod(k, plan.shape[1])
        share = float(flat[k] / total) if total != 0.0 else None
        pairs.append(CellPair(rank, i, j, divmod(i, grid), divmod(j, grid), float(plan[i, j]),
                              float(cell_sim[i, j]), float(flat[k]), share))
    return tuple(pairs)


@dataclass(frozen=True, eq=False)
class Explanation:
    """A part-wise explanation of the structural similarity of a query image and a reference image.

    Attributes:
        grid: cells per side; ``R = grid * grid``.
        similarity: the total structural similarity ``sum_ij T_ij S_ij``.
        plan: ``(R, R)`` float64 entropic (Sinkhorn) transport plan ``T`` (rows: query cells, columns: reference).
        cell_sim: ``(R, R)`` float64 cosine similarities ``S`` of the cells.
        contributions: ``(R, R)`` float64 ``T * S``; they sum to ``similarity``.
        query_weights: ``(R,)`` query cell weights ``a`` (the row marginal; cross-attention to the reference).
        ref_weights: ``(R,)`` reference cell weights ``b`` (the column marginal).
        top_pairs: the largest contributions, see :class:`CellPair`.
        eps, marginals: the options of the matching.
        global_similarity: cosine of the two global embeddings (None if unknown).
        query_id, ref_id: image identifiers (None if unknown).
        exact_plan: ``(R, R)`` unregularised optimal plan (POT ``ot.emd``) on the same cost and marginals, or None.
        exact_similarity: ``sum_ij exact_plan_ij S_ij``, or None.
    """

    grid: int
    similarity: float
    plan: np.ndarray
    cell_sim: np.ndarray
    contributions: np.ndarray
    query_weights: np.ndarray
    ref_weights: np.ndarray
    top_pairs: tuple[CellPair, ...]
    eps: float
    marginals: str
    global_similarity: float | None = None
    query_id: Any = None
    ref_id: Any = None
    exact_plan: np.ndarray | None = field(default=None)
    exact_similarity: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"grid must be a positive integer, got {self.grid!r}")
        size = self.grid * self.grid
        for name in ("plan", "cell_sim", "contributions"):
            object.__setattr__(self, name, _square(name, getattr(self, name), size))
        for name in ("query_weights", "ref_weights"):
            object.__setattr__(self, name, _weights(name, getattr(self, name), self.grid))
        if self.exact_plan is not None:
            object.__setattr__(self, "exact_plan", _square("exact_plan", self.exact_plan, size))
        object.__setattr__(self, "top_pairs", tuple(CellPair(*p) for p in self.top_pairs))

    @property
    def num_cells(self) -> int:
        """``R = grid * grid``."""
        return self.grid * self.grid

    @property
    def query_heatmap(self) -> np.ndarray:
        """``(grid, grid)`` query cell weights ``a`` laid out as the image grid."""
        return self.query_weights.reshape(self.grid, self.grid)

    @property
    def ref_heatmap(self) -> np.ndarray:
        """``(grid, grid)`` reference cell weights ``b`` laid out as the image grid."""
        return self.ref_weights.reshape(self.grid, self.grid)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: lists, floats, ints, strings (heat maps as ``grid x grid`` nested lists)."""
        return {
            "format": FORMAT_VERSION,
            "grid": self.grid,
            "query_id": self.query_id,
            "ref_id": self.ref_id,
            "eps": self.eps,
            "marginals": self.marginals,
            "similarity": self.similarity,
            "global_similarity": self.global_similarity,
            "plan": self.plan.tolist(),
            "cell_sim": self.cell_sim.tolist(),
            "contributions": self.contributions.tolist(),
            "query_weights": self.query_heatmap.tolist(),
            "ref_weights": self.ref_heatmap.tolist(),
            "top_pairs": [p._asdict() | {"query_rc": list(p.query_rc), "ref_rc": list(p.ref_rc)}
                          for p in self.top_pairs],
            "exact_plan": None if self.exact_plan is None else self.exact_plan.tolist(),
            "exact_similarity": self.exact_similarity,
        }

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_dict` as a JSON string (floats written with full precision: the round trip is exact)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError(f"data is not a DIML explanation of format {FORMAT_VERSION} (a dict written by "
                             "Explanation.to_dict / to_json); regenerate it with this version")
        try:
            pairs = [CellPair(**(p | {"query_rc": tuple(p["query_rc"]), "ref_rc": tuple(p["ref_rc"])}))
                     for p in data["top_pairs"]]
            return cls(
                grid=data["grid"], similarity=data["similarity"], plan=data["plan"], cell_sim=data["cell_sim"],
                contributions=data["contributions"], query_weights=data["query_weights"],
                ref_weights=data["ref_weights"], top_pairs=tuple(pairs), eps=data["eps"],
                marginals=data["marginals"], global_similarity=data["global_similarity"], query_id=data["query_id"],
                ref_id=data["ref_id"], exact_plan=data["exact_plan"], exact_similarity=data["exact_similarity"],
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"data is an incomplete DIML explanation ({type(error).__name__}: {error}); pass the "
                             "unmodified output of Explanation.to_dict / to_json") from None

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"text is not valid JSON ({error}); pass the output of Explanation.to_json") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Explanation):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None
