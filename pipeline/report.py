"""``python -m pipeline.report [--experiment NAME | --parent-run ID] [--out DIR] [--tracking-uri URI]``

The paper's table from MLflow: one row per dataset x loss (x backbone) x training mode (global baseline or DIML
structural training); columns R@1 / RP / MAP@R of the global ranking and of test-time DIML re-ranking at each depth,
with the gain over global; mean +- std over seeds. Written as Markdown, CSV and Parquet plus a PNG chart of the
gains, and logged to the parent run.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from dataclasses import dataclass, field

import numpy as np

from diml import names
from pipeline import tracking

METRICS = tuple((label, names.tracked_name(label)) for label in names.SHOWN_METRICS)  # (label, tracked name)
R1 = names.recall_key(1)
GAIN = (f"gain {R1}", f"gain {names.tracked_name(R1)}")  # (label, column): a re-ranking's R@1 minus global R@1
GROUP_TAGS = ("dataset", "loss_variant", "backbone", "grid", "similarity")
# The part-correspondence table (issue 25): per method of names.INTERP_REPORTED, these metrics; "untrained" is the
# model's own flow before training (init/test/...), on the same pairs.
INTERP_METRICS = (names.CELL_ACCURACY, names.pck_name(0.1))
UNTRAINED = "untrained"


@dataclass
class Report:
    frame: "object"  # pandas.DataFrame, one row per group, numeric columns
    rankings: list[str]
    caption: str
    hardware: dict[str, str] = field(default_factory=dict)  # label (A, B, ...) -> the env.hardware it stands for

    def markdown(self) -> str:
        header = ["dataset", "loss", "backbone", "grid", "training", "seeds"] + (
            ["hardware"] if len(self.hardware) > 1 else [])
        for ranking in self.rankings:
            label = _label(ranking)
            header += [f"{label} {m}" for m, _ in METRICS]
            if ranking != names.GLOBAL:
                header.append(f"{label} {GAIN[0]}")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in self.frame.iterrows():
            cells = _group_cells(row) + ([row["hardware"]] if len(self.hardware) > 1 else [])
            for ranking in self.rankings:
                cells += [_pm(row, f"{ranking}/{m}") for m, _ in METRICS]
                if ranking != names.GLOBAL:
                    cells.append(_pm(row, f"{ranking}/{GAIN[0]}", signed=True))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + f"\n\n{self.caption}\n" + self.interpretability_markdown()

    def interpretability_markdown(self) -> str:
        """The part-correspondence table: per group, each method's cell accuracy / PCK@0.1 (mean ± std over seeds),
        the untrained model's flow first; empty when no trial measured it."""
        methods = [m for m in (UNTRAINED, *names.INTERP_REPORTED)
                   if any(f"interp/{m}/{k} mean" in self.frame for k in INTERP_METRICS)]
        if not methods or len(methods) == 1 and methods[0] == UNTRAINED:
            return ""
        label = lambda m: "untrained flow argmax" if m == UNTRAINED else names.interp_label(m, "").strip()  # noqa: E731
        header = ["dataset", "loss", "backbone", "grid", "training", "seeds"] + [label(m) for m in methods]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in self.frame.iterrows():
            cells = _group_cells(row) + [" / ".join(_pm(row, f"interp/{m}/{k}") for k in INTERP_METRICS)
                                         for m in methods]
            lines.append("| " + " | ".join(cells) + " |")
        caption = ("Part correspondence on the test split (issue 25, docs/INTERPRETABILITY.md): each cell is "
                   f"{' / '.join(INTERP_METRICS)} in percent, mean ± std over seeds. A keypoint visible in both images "
                   "of a same-class pair is carried from its query cell through the plan: argmax = the reference "
                   "cell that receives most of its mass, mean = the mass-weighted mean of the reference cells' "
                   "centres; cell acc = the predicted cell holds the true keypoint; PCK@0.1 = within 0.1 x the image "
                   "side. flow = the model's OT plan (cross-attention marginals); uniform-OT = the plan with "
                   "uniform marginals; nearest-cos = the most cosine-similar reference cell; identity = the same "
                   "position; ceiling = the true keypoint snapped to its cell's centre; untrained = the flow of "
                   "the same network before training.")
        return "\n### Part correspondence\n\n" + "\n".join(lines) + f"\n\n{caption}\n"


def _group_cells(row) -> list[str]:
    return [row["dataset"], row["loss_variant"], row["backbone"], str(row["grid"]), row["similarity"],
            str(row["seeds"])]


def _label(ranking: str) -> str:
    return names.ranking_label(ranking, paper=True)


def _pm(row, key: str, signed: bool = False) -> str:
    mean, std = row.get(f"{key} mean", math.nan), row.get(f"{key} std", math.nan)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if not std or math.isnan(std) else f"{text} ± {std:.2f}"


def _trial_records(runs) -> list[dict]:
    records = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(tracking.TAG_ROLE) != "trial" or run.info.status != "FINISHED":
            continue
        record = {key: tags.get(key, tags.get("loss", "?") if key == "loss_variant" else "?") for key in GROUP_TAGS}
        record["grid"] = tags.get("grid") or getattr(run.data, "params", {}).get("model.grid", "?")
        record.update(seed=tags.get("seed", "0"), selection=tags.get("selection_split", "?"),
                      convention=tags.get("r_convention", "?"), run_id=run.info.run_id,
                      hardware=_hardware_line(tags))
        for key, value in metrics.items():
            if key.startswith("best/test/") and key.count("/") == 3:
                _, _, ranking, metric = key.split("/")
                record[f"{ranking}/{metric}"] = value
        for method in names.INTERP_REPORTED:
            for metric in INTERP_METRICS:
                key = names.interp_key("best/test", names.interp_name(method, metric))
                if key in metrics:
                    record[f"interp/{method}/{metric}"] = metrics[key]
        for metric in INTERP_METRICS:
            key = names.interp_key("init/test", names.interp_name(names.transfer_method(names.OT, names.ARGMAX), metric))
            if key in metrics:
                record[f"interp/{UNTRAINED}/{metric}"] = metrics[key]
        records.append(record)
    return records


def _hardware_line(tags: dict[str, str]) -> str:
    """What a trial's numbers depend on besides the spec: its ``env.hardware`` and library versions (runs logged
    before these tags existed: ``not recorded``)."""
    if "env.hardware" not in tags:
        return "not recorded"
    versions = ", ".join(f"{name} {tags[f'env.{name}']}" for name in ("torch", "cuda")
                         if tags.get(f"env.{name}", "none") != "none")
    return f"{tags['env.hardware']}; {versions}" + ("; deterministic" if tags.get("env.deterministic") == "true" else "")


def _hardware_labels(frame) -> dict[str, str]:
    """``{label: hardware line}``: A, B, ... in order of first appearance."""
    lines = list(dict.fromkeys(frame["hardware"]))
    return {chr(ord("A") + i) if i < 26 else f"H{i}": line for i, line in enumerate(lines)}


def build_report(runs) -> Report:
    """Aggregate finished trial runs into the paper-style table (mean and std over seeds)."""
    import pandas as pd

    records = _trial_records(runs)
    if not records:
        raise ValueError("no finished trial runs to report: run a grid first (python -m pipeline.launch SPEC)")
    frame = pd.DataFrame(records)
    rankings = sorted({c.split("/")[0] for c in frame.columns if "/" in c and names.is_ranking(c.split("/")[0])},
                      key=names.ranking_order)
    r1 = names.tracked_name(R1)
    for ranking in rankings[1:]:
        frame[f"{ranking}/{GAIN[1]}"] = frame[f"{ranking}/{r1}"] - frame[f"{names.GLOBAL}/{r1}"]
    hardware = _hardware_labels(frame)
    label_of = {line: label for label, line in hardware.items()}
    rows = []
    for key, group in frame.groupby(list(GROUP_TAGS), sort=True):
        row = dict(zip(GROUP_TAGS, key), seeds=int(group["seed"].nunique()),
                   hardware="+".join(label_of[line] for line in dict.fromkeys(group["hardware"])))
        for ranking in rankings:
            shown_names = list(METRICS) + ([GAIN] if ranking != names.GLOBAL else [])
            for shown, stored in shown_names:
                values = group[f"{ranking}/{stored}"].astype(float).to_numpy()
                row[f"{ranking}/{shown} mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
                row[f"{ranking}/{shown} std"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else math.nan
        for column in (c for c in frame.columns if c.startswith("interp/")):
            values = group[column].astype(float).to_numpy()
            finite = np.isfinite(values)
            row[f"{column} mean"] = float(values[finite].mean()) if finite.any() else math.nan
            row[f"{column} std"] = float(values[finite].std(ddof=1)) if finite.sum() > 1 else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    conventions = ", ".join(sorted(set(frame["convention"])))
    selections = ", ".join(sorted(set(frame["selection"])))
    caption = (f"Test-set retrieval in percent, mean ± std over seeds. R convention: {conventions}. Best epoch "
               f"selected on: {selections} split. DIML@K: the global top-K re-ranked by structural + global "
               "similarity; gain: DIML@K R@1 minus global R@1. training: diml = trained with the structural loss.")
    caption += "\n\n" + _hardware_caption(hardware, table)
    return Report(frame=table, rankings=rankings, caption=caption, hardware=hardware)


def _hardware_caption(hardware: dict[str, str], table) -> str:
    """Where the numbers were computed; a warning where one row averages runs from different hardware or versions
    (float results differ between CPUs and GPUs, and training amplifies the difference: docs/REPRODUCIBILITY.md)."""
    if len(hardware) == 1:
        return f"All trials ran on: {next(iter(hardware.values()))}."
    text = "Hardware: " + "; ".join(f"**{label}** = {line}" for label, line in hardware.items()) + "."
    mixed = int(table["hardware"].str.contains("+", regex=False).sum())
    if mixed:
        text += (f" Warning: {mixed} row(s) average trials run on different hardware or library versions (marked "
                 "A+B): their spread includes the machines' float differences, not only the seeds'.")
    return text


def gains_chart(report: Report, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = report.frame
    depths = report.rankings[1:]
    labels = [f"{r.dataset}\n{r.loss_variant}\n{r.backbone} ({r.similarity})" for r in frame.itertuples()]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) * max(1, len(depths))), 4.5), dpi=100)
    width = 0.8 / max(1, len(depths))
    x = np.arange(len(labels))
    for i, ranking in enumerate(depths):
        ax.bar(x + i * width, frame[f"{ranking}/{GAIN[0]} mean"].to_numpy(dtype=float), width,
               yerr=np.nan_to_num(frame[f"{ranking}/{GAIN[0]} std"].to_numpy(dtype=float)), label=_label(ranking))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x + width * (len(depths) - 1) / 2, labels, fontsize=8)
    ax.set_ylabel(f"{R1} gain over {names.GLOBAL} (points)")
    ax.set_title("Test-time DIML re-ranking gain")
    if depths:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: Report, out: pathlib.Path) -> list[pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.csv", out / "report.parquet", out / "gains.png"]
    files[0].write_text(report.markdown())
    report.frame.to_csv(files[1], index=False)
    report.frame.to_parquet(files[2], index=False)
    gains_chart(report, files[3])
    return files


def runs_for(uri: str, experiment: str | None, parent_run: str | None):
    """Child runs of ``parent_run`` (and that run's id), or of the latest launch of ``experiment``."""
    c = tracking.client(uri)
    if parent_run:
        parent = c.get_run(parent_run)
        experiment_id = parent.info.experiment_id
    else:
        found = c.get_experiment_by_name(experiment)
        if found is None:
            raise ValueError(f"--experiment {experiment!r} does not exist in {uri}: check the name in the MLflow UI")
        experiment_id = found.experiment_id
        launches = tracking.find_runs(uri, experiment_id, f"tags.`{tracking.TAG_ROLE}` = 'launch'")
        if not launches:
            raise ValueError(f"experiment {experiment!r} has no launch runs: run a grid first")
        parent_run = max(launches, key=lambda r: r.info.start_time).info.run_id
    runs = tracking.find_runs(uri, experiment_id, f"tags.`{tracking.TAG_PARENT}` = '{parent_run}'")
    return parent_run, runs


def report_launch(uri: str, parent_run: str, runs, out: pathlib.Path) -> Report:
    """Build, write and log the report of one launch (used by the launcher at the end of a grid)."""
    report = build_report(runs)
    files = write_report(report, out)
    tracking.log_artifacts(uri, parent_run, [(str(f), "report") for f in files])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="MLflow experiment name (its latest launch is reported)")
    which.add_argument("--parent-run", help="MLflow run id of a launch")
    parser.add_argument("--out", default="report", help="output folder (default ./report)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    args = parser.parse_args(argv)
    uri = tracking.resolve_tracking_uri(args.tracking_uri, explicit=True)
    try:
        tracking.check_reachable(uri)
        parent, runs = runs_for(uri, args.experiment, args.parent_run)
        report = report_launch(uri, parent, runs, pathlib.Path(args.out))
    except (ValueError, tracking.TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown())
    print(f"written to {os.path.abspath(args.out)} and logged to run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
