"""`hpsearch report STUDY`: one self-contained HTML page for the morning after, logged to the parent run.

Optuna's own plots (optuna.visualization), the finalists' evidence from promotion (search/review/_finalists.py),
the top trials' learning curves with a diagnosis from its curves, the best model's confusion
matrix and sample predictions on the validation split (the test split stays untouched), and the spec, budget
and counts. Every figure in the text is written by one rule, `studies.readable`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import studies
import tracking
from studies import UserError, diagnose, readable
from studies.words import FAILED
from tracking import tags as T
from trainables import get_trainable

from ._finalists import finalists_html

TOP = 5  # trials whose curves and diagnoses are shown
SAMPLES = 16  # sample predictions in the grid


def build_report(
    study: str, output: str | None = None, tracking_uri: str | None = None, run_id: str | None = None
) -> tuple[Path, list[str]]:
    """Write the page; returns its path and the diagnosis lines of the top trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, parent = studies.study_run(study, tracking_uri, run_id)
    frame = studies.results(study, tracking_uri=tracking_uri, run_id=parent.info.run_id)
    summary, status = studies.summary(study, tracking_uri=tracking_uri, run_id=parent.info.run_id)
    metric, mode = frame.attrs["metric"], frame.attrs["mode"]
    if frame.empty:
        raise UserError(f"study {study!r}: run {parent.info.run_id} has no trials to report on")

    figures = _optuna_figures(store, parent, study, mode)
    ranked = frame[frame["metric"].notna() & (frame["state"] != FAILED)].head(TOP)
    curves, diagnoses = _curves(store, ranked, metric)
    figures.append(("Learning curves of the top trials (train and validation loss)", curves))
    figures += _best_model_figures(store, parent)

    sections = [
        ("Summary", _summary_html(parent, summary, status, metric)),
        ("Finalists (promotion's evidence)", finalists_html(store, parent, study, frame, metric, mode)),
        (
            "Diagnoses (from each trial's train and validation curves)",
            "<ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in diagnoses) + "</ul>",
        ),
        *_figure_sections(figures),
        ("Study spec", f"<pre>{html.escape(_spec_text(store, parent))}</pre>"),
    ]
    path = Path(output) if output else store.home / "reports" / f"{study}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(study, sections))
    store.client.log_artifact(parent.info.run_id, str(path), "report")
    return path, diagnoses


def _summary_html(parent, summary, status: dict, metric: str) -> str:
    """The run, its counts, the budget spent, the best value and the test split's metrics."""
    counts = ", ".join(f"{v} {k}" for k, v in summary.counts.items())
    spent = parent.data.tags.get(T.ELAPSED)
    header = (
        f"<p>Run <code>{html.escape(parent.info.run_id)}</code> ({html.escape(str(status['status']))}, "
        f"started {html.escape(status['started'])}); trials: {counts}; "
        f"budget: {summary.finished} of {summary.trials} trials"
        + (f", {readable(float(spent) / 3600)} of {readable(summary.hours)} hours" if summary.hours and spent else "")
        + (f", {readable(float(spent))} s spent" if spent else "")
        + f". Best {html.escape(metric)} = {readable(summary.best_value)}"
        f" (trial {html.escape(str(summary.best_trial))}).</p>"
    )
    test = {k: v for k, v in parent.data.metrics.items() if k.startswith("test_")}
    if test:
        header += (
            "<p>Test split (read once, for the final best checkpoint): "
            + ", ".join(f"{html.escape(k)} = {readable(v)}" for k, v in sorted(test.items()))
            + "</p>"
        )
    return header


def _figure_sections(figures: list[tuple[str, go.Figure | None]]) -> list[tuple[str, str]]:
    sections = []
    first = True
    for title, figure in figures:
        if figure is None:
            sections.append((title, "<p>(not enough trials for this plot)</p>"))
            continue
        # plotly.js is inlined once, with the first figure: the page needs no network.
        sections.append((title, figure.to_html(full_html=False, include_plotlyjs=first, default_width="100%")))
        first = False
    return sections


def _page(study: str, sections: list[tuple[str, str]]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>hpsearch report: {html.escape(study)}</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "section{margin-bottom:2em}pre{background:#f4f4f4;padding:1em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}</style></head><body>"
        f"<h1>Study {html.escape(study)}</h1>"
        + "".join(f"<section><h2>{html.escape(t)}</h2>{body}</section>" for t, body in sections)
        + "</body></html>"
    )


def _optuna_figures(store, parent, study: str, mode: str) -> list[tuple[str, go.Figure | None]]:
    from ..sampling._journal import run_journal
    from ..sampling._ranking import best_reached
    from ..scheduling._tune import optuna_storage

    name = parent.data.tags.get(T.OPTUNA_STUDY)
    journal = run_journal(parent, store.home)
    if not journal.exists():
        return [(f"Optuna plots (its journal {journal} is not on this machine)", None)]
    try:
        source = optuna.load_study(study_name=name, storage=optuna_storage(journal))
    except (KeyError, TypeError):
        return [("Optuna plots", None)]
    # Optuna's history, parallel-coordinate and importance plots draw only COMPLETE trials, and with ASHA
    # most trials are PRUNED. They are drawn here over a copy where every trial that reported a value
    # counts, with the best value it reached (as in the sampler's ranked view); the intermediate-values plot
    # reads the real study.
    view = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for trial in source.get_trials(deepcopy=False):
        value = best_reached(trial, mode)
        if value is None:
            continue
        view.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=value,
                intermediate_values=trial.intermediate_values,
                user_attrs={"state": trial.state.name},
            )
        )
    vis = optuna.visualization
    out = []
    for title, draw, study_obj in (
        ("Optimisation history (every trial, at the best value it reached)", vis.plot_optimization_history, view),
        ("Parallel coordinates (every trial)", vis.plot_parallel_coordinate, view),
        ("Parameter importances", vis.plot_param_importances, view),
        ("Intermediate values (each trial's metric per epoch; ASHA's cuts show)", vis.plot_intermediate_values, source),
    ):
        try:
            out.append((title, draw(study_obj)))
        except (ValueError, RuntimeError, ZeroDivisionError):
            out.append((title, None))  # e.g. importances need two trials with different params
    return out


def _curves(store, ranked, metric: str) -> tuple[go.Figure, list[str]]:
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", metric))
    diagnoses = []
    for _, row in ranked.iterrows():
        history = {key: _history(store, row["run_id"], key) for key in ("train_loss", "val_loss", metric)}
        name = row["trial_id"]
        for key, dash in (("train_loss", "dot"), ("val_loss", "solid")):
            steps, values = history[key]
            figure.add_trace(go.Scatter(x=steps, y=values, name=f"{name} {key}", line={"dash": dash}), 1, 1)
        steps, values = history[metric]
        figure.add_trace(go.Scatter(x=steps, y=values, name=f"{name} {metric}"), 1, 2)
        train, val = history["train_loss"][1], history["val_loss"][1]
        n = min(len(train), len(val))
        line = diagnose(train[:n], val[:n]).line() if n else "no diagnosis: the trial reports no train_loss/val_loss"
        diagnoses.append(f"trial {name} ({row['state']}, {metric} {readable(row['metric'])}): {line}")
    figure.update_layout(height=450, xaxis_title="epoch", xaxis2_title="epoch")
    return figure, diagnoses


def _history(store, run_id: str, key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, float] = {}
    for m in store.client.get_metric_history(run_id, key):
        by_step[m.step] = m.value  # a resumed trial may log an epoch twice: the later one counts
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _best_model_figures(store, parent) -> list[tuple[str, go.Figure | None]]:
    """Confusion matrix and sample predictions of the best checkpoint, on the validation split."""
    tags = parent.data.tags
    if T.CHECKPOINT_DIGEST not in tags:
        return [("Best model", None)]
    payload = tracking.load_best_checkpoint(store, parent.info.run_id)
    trainable = get_trainable(tags.get(T.TRAINABLE) or parent.data.params["trainable"])
    if trainable.samples is None or trainable.export is None:
        return []
    config = payload["config"]
    x, y, shape = trainable.samples(config, "val")
    import torch

    model, _ = trainable.export(config, payload["model"])
    with torch.no_grad():
        outputs = model(torch.from_numpy(x)).numpy()
    if y is None:  # a generative model (labels None): `x` is its inputs (noise), and what it makes is drawn
        return [("Best model: generated samples", _image_grid(outputs[:SAMPLES], shape))]
    predicted = outputs.argmax(1)
    classes = int(max(y.max(), predicted.max()) + 1)
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (y, predicted), 1)
    confusion = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(range(classes)),
            y=list(range(classes)),
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
        )
    )
    confusion.update_layout(
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        height=500,
        title=f"validation accuracy {readable(float((predicted == y).mean()))} ({len(y)} examples)",
    )
    figures = [("Best model: confusion matrix (validation split)", confusion)]
    if shape is not None:
        # Misclassified examples first: they are the ones worth looking at.
        order = np.argsort(predicted == y, kind="stable")[:SAMPLES]
        grid = _image_grid(x[order], shape, [f"pred {predicted[i]} / true {y[i]}" for i in order])
        figures.append(("Best model: sample predictions (misclassified first)", grid))
    return figures


def _image_grid(
    images: np.ndarray, shape: tuple[int, ...], titles: list[str] | None = None, cols: int = 8
) -> go.Figure:
    grid = make_subplots(rows=(len(images) + cols - 1) // cols, cols=cols, subplot_titles=titles)
    for k, image in enumerate(images):
        image = image.reshape(shape)
        if len(shape) == 3:  # (3, H, W): colour, drawn as it is (uint8) or stretched to 0..255 (floats)
            rgb = (
                image
                if image.dtype == np.uint8
                else ((image - image.min()) / max(float(image.max() - image.min()), 1e-12) * 255).astype(np.uint8)
            )
            trace = go.Image(z=rgb.transpose(1, 2, 0))
        else:
            trace = go.Heatmap(z=image, colorscale="gray_r", showscale=False)
        grid.add_trace(trace, k // cols + 1, k % cols + 1)
    grid.update_yaxes(autorange="reversed", showticklabels=False)
    grid.update_xaxes(showticklabels=False)
    grid.update_layout(height=160 * ((len(images) + cols - 1) // cols) + 60)
    return grid


def _spec_text(store, parent) -> str:
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(store.client.download_artifacts(parent.info.run_id, "study.yaml", tmp)).read_text()
    except Exception:
        return json.dumps(dict(parent.data.params), indent=2)
