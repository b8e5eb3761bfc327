"""The built-in DCGAN on the plain `train(config, reporter)` route: its FID falls, --resume continues where the
checkpoint left off, and the catalog study sweeps, tests once, serves its generator and reports a sample grid."""

import json

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, run_cli
from trainables import MemoryReporter, get_trainable
from trainables._dcgan import frechet_distance

EPOCHS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as a Ray trial gets: on a shared 2-core machine, two threads that each wait on the other
    make these tiny networks tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    reporter = MemoryReporter(seed=0, metric="val_fid", mode="min")
    get_trainable("digits-dcgan").train({"epochs": EPOCHS}, reporter)
    return reporter


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift():
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a, a + [3.0, 0, 0, 0]) == pytest.approx(9.0)  # same covariance: the means' distance


def test_the_fid_falls_and_the_trained_generator_beats_an_untrained_one(trained):
    import torch

    from trainables._dcgan import build_generator

    fids = [r["val_fid"] for r in trained.results]
    assert [r["epoch"] for r in trained.results] == list(range(1, EPOCHS + 1))
    assert fids[-1] < 0.8 * fids[0], fids
    dcgan = get_trainable("digits-dcgan")
    config = trained.checkpoints[-1]["config"]
    torch.manual_seed(0)
    untrained = dcgan.evaluate(config, build_generator(config).state_dict(), "test")["test_fid"]
    best = dcgan.evaluate(config, trained.checkpoints[-1]["model"], "test")["test_fid"]
    assert best < 0.7 * untrained, (best, untrained)


def test_the_ruler_is_trained_even_when_first_needed_under_no_grad(trained):
    import torch

    from trainables import release_caches

    release_caches()  # as in the driver, whose first FID is the test evaluation, asked for under no_grad
    with torch.no_grad():
        best = trained.checkpoints[-1]
        fid = get_trainable("digits-dcgan").evaluate(best["config"], best["model"], "val")
    assert fid["val_fid"] == pytest.approx(min(r["val_fid"] for r in trained.results))


def test_resume_continues_at_the_next_epoch_as_if_never_stopped(trained):
    saved = next(c for c in trained.checkpoints if c["progress"]["epoch"] == 2)
    assert {"model", "discriminator", "opt_g", "opt_d"} <= set(saved)
    resumed = MemoryReporter(seed=0, checkpoint=saved, metric="val_fid", mode="min")
    get_trainable("digits-dcgan").train({"epochs": EPOCHS}, resumed)
    assert [r["epoch"] for r in resumed.results] == [3, 4]
    # Weights, both optimizers and the random stream are restored: the same epochs, the same values.
    assert [r["val_fid"] for r in resumed.results] == pytest.approx([r["val_fid"] for r in trained.results[2:]])


def test_the_catalog_study_sweeps_tests_once_serves_the_generator_and_reports_samples(tmp_path, monkeypatch, cli):
    import mlflow

    import tracking

    spec = yaml.safe_load((REPO / "studies" / "catalog" / "digits-dcgan.yaml").read_text())
    spec.update(name="dcgan-mini", trials=2, asha={"max_t": 2, "grace_period": 1, "reduction_factor": 2})
    study = tmp_path / "dcgan-mini.yaml"
    study.write_text(yaml.safe_dump(spec))
    swept = run_cli("run", study, cwd=tmp_path, env={"HPSEARCH_HOME": str(tmp_path / "home")})
    assert swept.returncode == 0, swept.stdout + swept.stderr
    # The rest in this process (the `cli` fixture): no Ray, and no second start-up of the world.
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    code, out, _ = cli("results", "dcgan-mini", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2
    assert [r["metric"] for r in rows] == sorted(r["metric"] for r in rows)  # minimised: the smallest first

    store = tracking.Store()
    parent = tracking.parent_runs(store, "dcgan-mini")[0]
    assert (parent.data.params["metric"], parent.data.params["mode"]) == ("val_fid", "min")
    assert len(store.client.get_metric_history(parent.info.run_id, "test_fid")) == 1
    store.use()
    served = mlflow.pyfunc.load_model(parent.data.tags[tracking.tags.MODEL_URI])
    latent = served.metadata.get_input_schema().inputs[0].shape[1]
    images = np.asarray(served.predict(np.random.default_rng(0).normal(size=(3, latent)).astype(np.float32)))
    assert images.shape == (3, 1, 8, 8) and images.min() >= 0 and images.max() <= 16

    code, _, err = cli("report", "dcgan-mini", "--output", tmp_path / "dcgan.html")
    assert code == 0, err
    page = (tmp_path / "dcgan.html").read_text()
    assert "Best model: generated samples" in page and "confusion matrix" not in page

    # `check` needs a setup hook a GAN cannot give (its two losses fight by design): one line, no traceback.
    code, _, err = cli("check", study)
    assert code == 2 and err.strip().count("\n") == 0 and "digits-dcgan has no setup hook" in err, err
