"""The results of a launch, read back from MLflow: one row per trial, global vs re-ranked metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from diml import names
from pipeline import tracking

SHOWN = tuple((label, names.tracked_name(label)) for label in names.SHOWN_METRICS)  # (label, tracked name)
UNTRAINED_R1 = names.metric_key("init/test", names.GLOBAL, names.recall_key(1))
INTERP = tuple((names.interp_label(method, metric), names.interp_key("best/test", names.interp_name(method, metric)))
               for method, metric in names.INTERP_SHOWN)  # (label, tracked name) of the part correspondence


@dataclass
class TrialRow:
    name: str
    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]

    def value(self, ranking: str, metric: str, prefix: str = "best/test") -> float:
        return self.metrics.get(f"{prefix}/{ranking}/{metric}", math.nan)


@dataclass
class ResultsTable:
    rows: list[TrialRow]
    rankings: list[str] = field(default_factory=list)

    def render(self) -> str:
        if not self.rows:
            return "no trial reached MLflow"
        header = ["trial", "loss", "mode", "status"]
        for ranking in self.rankings:
            label = names.ranking_label(ranking)
            header += [f"{label} {shown}" for shown, _ in SHOWN]
        has_init = any(UNTRAINED_R1 in r.metrics for r in self.rows)
        if has_init:
            header.append(f"untrained {names.recall_key(1)}")
        interp = [(label, key) for label, key in INTERP if any(key in r.metrics for r in self.rows)]
        header += [label for label, _ in interp]
        body = []
        for row in self.rows:
            cells = [row.name, row.tags.get("loss", "?"), row.tags.get("similarity", "?"), row.status]
            for ranking in self.rankings:
                cells += [_fmt(row.value(ranking, key)) for _, key in SHOWN]
            if has_init:
                cells.append(_fmt(row.metrics.get(UNTRAINED_R1, math.nan)))
            cells += [_fmt(row.metrics.get(key, math.nan)) for _, key in interp]
            body.append(cells)
        widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _rankings(rows: list[TrialRow]) -> list[str]:
    found = {key.split("/")[2] for row in rows for key in row.metrics if key.startswith("best/test/")
             and key.count("/") == 3 and names.is_ranking(key.split("/")[2])}
    return sorted(found, key=names.ranking_order)


def collect_results(uri: str, experiment_id: str, parent_run_id: str) -> ResultsTable:
    """Every child run of ``parent_run_id`` with its tags and latest metrics, ordered by trial index."""
    runs = tracking.find_runs(uri, experiment_id, f"tags.`{tracking.TAG_PARENT}` = '{parent_run_id}'")
    rows = [TrialRow(name=r.data.tags.get("mlflow.runName", r.info.run_id), run_id=r.info.run_id,
                     status=r.info.status, tags=dict(r.data.tags), metrics=dict(r.data.metrics)) for r in runs]
    rows.sort(key=lambda r: (int(r.tags.get("trial_index", 0)), r.name))
    return ResultsTable(rows=rows, rankings=_rankings(rows))
