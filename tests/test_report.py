"""`hpsearch report` on a finished tiny study: the page, its diagnoses, its MLflow artifact, and the page
rendered in a real headless Chromium (skipped, saying how to install it, where there is none)."""

import io
import re
import shutil
import subprocess

import pytest

import studies
from search import api
from tests.conftest import write_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = 7  # history, parallel coordinates, importances, intermediate values, curves, confusion, samples


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("HPSEARCH_HOME", str(root / "home"))
    study = write_study(
        root / "rep.yaml",
        """\
        name: rep
        trainable: digits-mlp
        space:
          lr: {type: float, low: 1.0e-4, high: 1.0, log: true}
          hidden: {type: int, low: 8, high: 128, log: true}
        trials: 6
        asha: {max_t: 6, grace_period: 2, reduction_factor: 2}
        max_concurrent: 2
        """,
    )
    api.run(str(study), out=io.StringIO())
    path, diagnoses = api.report("rep", output=str(root / "rep.html"))
    yield {"root": root, "path": root / "rep.html", "returned": path, "diagnoses": diagnoses}
    mp.undo()


def test_report_page_holds_the_plots_diagnoses_and_spec(reported):
    page = reported["path"].read_text()
    assert page.count('class="plotly-graph-div"') == FIGURES
    assert page.count("<script") >= FIGURES and 'src="http' not in page  # self-contained: no script fetched
    for title in (
        "Optimisation history",
        "Parallel coordinates",
        "Parameter importances",
        "Intermediate values",
        "Learning curves",
        "confusion matrix",
        "sample predictions",
        "Study spec",
        "Finalists",
    ):
        assert title in page
    assert "Nothing was promoted with evidence yet" in page  # no promotion with --candidates in this study
    assert reported["diagnoses"] and all("next:" in d for d in reported["diagnoses"])
    kinds = {"overfitting", "underfitting", "unstable", "healthy"}
    assert all(any(f"): {k}:" in d for k in kinds) for d in reported["diagnoses"])
    assert "trainable: digits-mlp" in page and "trials: 6" in page


def _text(page: str) -> str:
    """What a person reads: the page less its scripts and the figures' data."""
    page = re.sub(r"<script.*?</script>", "", page, flags=re.S)
    return re.sub(r'<div id="[^"]*" class="plotly-graph-div".*?</div>', "", page, flags=re.S)


def test_every_figure_a_person_reads_is_rounded(reported):
    text = "\n".join([_text(reported["path"].read_text()), *reported["diagnoses"]])
    assert "Best val_accuracy = " in text
    decimals = re.findall(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?", text)
    assert decimals  # the summary, the test split's metrics and the diagnoses hold some
    significant = [d for d in decimals if len(re.sub(r"e.*|\.", "", d).lstrip("0")) > 4]
    assert not significant, significant


def test_report_is_logged_to_the_parent_run(reported, monkeypatch):
    import tracking

    monkeypatch.setenv("HPSEARCH_HOME", str(reported["root"] / "home"))
    store = tracking.Store()
    parent = tracking.parent_runs(store, "rep")[0]
    assert [a.path for a in store.client.list_artifacts(parent.info.run_id, "report")] == ["report/rep.html"]


def test_report_renders_in_headless_chromium(reported, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's with `apt-get install chromium` to run the browser test")
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
        "--window-size=1300,4000",
    ]
    url = reported["path"].as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    # Plotly marks each figure it has drawn js-plotly-plot, and draws into SVGs of class main-svg.
    drawn = dom.count("plotly-graph-div js-plotly-plot")
    assert drawn == FIGURES, f"{drawn} of {FIGURES} figures drawn"
    assert dom.count('class="main-svg"') >= 2 * FIGURES
    assert dom.count("<path") > 100  # lines, markers, bars and cells, not empty axes

    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True)
    from PIL import Image, ImageStat

    image = Image.open(shot).convert("L")
    stat = ImageStat.Stat(image)
    assert image.size == (1300, 4000) and stat.stddev[0] > 20  # not a blank page
    dark = sum(image.histogram()[:128]) / (image.size[0] * image.size[1])
    assert 0.005 < dark < 0.5  # ink on a white page: text, axes, plots


def test_report_shows_the_finalists_promotion_left(reported, monkeypatch):
    """Last: it adds retrainings (as `promote --candidates` records them) and writes the report again."""
    import tracking
    from search.review._reseed import RESEED
    from tracking.tags import RESEED_OF

    monkeypatch.setenv("HPSEARCH_HOME", str(reported["root"] / "home"))
    store = tracking.Store()
    parent = tracking.parent_runs(store, "rep")[0]
    best = api.results("rep").iloc[0]
    recorder = tracking.StudyRecorder(store, "rep", {})
    recorder.attach(parent)
    for seed, value in ((1, 0.9), (2, 0.8)):
        name = f"{best['trial_id']}-seed{seed}"
        recorder.trial_started(name, dict(best["params"]), kind=RESEED, tags={RESEED_OF: best["trial_id"]})
        recorder.trial_ended(name, "completed", {tracking.tags.BEST_VALUE: value})
    again = reported["root"] / "again" / "rep.html"  # the same name: the run keeps one report artifact
    api.report("rep", output=str(again))
    finalists = again.read_text().split("Finalists", 1)[1].split("</section>", 1)[0]
    row = f"<td>{best['trial_id']}</td><td>{studies.readable(best['metric'])}</td><td>2 seeds</td>"
    assert row + "<td>0.85 ± 0.07071</td><td>2</td>" in finalists, finalists
