"""The test split takes no part in selection: it is read once, by the driver, for the final best
checkpoint; promoting and reporting read it no more (the result is cached by the checkpoint's digest)."""

import collections
import io
import os

from search import api
from tests.conftest import write_study


def test_the_test_split_is_read_once_for_the_final_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    study = write_study(tmp_path / "counted.yaml", f"""\
        name: counted
        trainable: tests.counting:trainable
        space:
          lr: {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
        fixed: {{log_dir: "{tmp_path}"}}
        trials: 4
        asha: {{max_t: 3, grace_period: 1, reduction_factor: 2}}
        max_concurrent: 2
        """)  # fmt: skip
    outcome = api.run(str(study), out=io.StringIO())
    assert outcome.test_metrics and outcome.best_trial

    def reads():
        lines = (tmp_path / "reads.log").read_text().split()
        return collections.Counter(zip(lines[::2], lines[1::2]))

    during = reads()
    driver = str(os.getpid())
    test_reads = {pid: n for (pid, split), n in during.items() if split == "test"}
    assert test_reads == {driver: 1}  # once, in the driver, after the search
    assert sum(n for (pid, split), n in during.items() if split == "train" and pid != driver) >= 4  # the workers

    api.promote("counted")  # tested already: the cached result is reused
    api.report("counted", output=str(tmp_path / "counted.html"))  # the report reads the validation split
    assert reads()[(driver, "test")] == 1
    assert sum(n for (_, split), n in reads().items() if split == "test") == 1


def test_promote_with_reseeds_retrains_the_candidates_and_records_the_evidence(tmp_path, monkeypatch, cli):
    import json

    import tracking

    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    study = write_study(tmp_path / "seeded.yaml", """\
        name: seeded
        trainable: digits-mlp
        space:
          lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
        trials: 4
        asha: {max_t: 3, grace_period: 3}
        max_concurrent: 2
        """)  # fmt: skip
    api.run(str(study), out=io.StringIO())
    code, out, err = cli("promote", "seeded", "--candidates", "2", "--reseeds", "2", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert len(info["candidates"]) == 2 and sum(c["chosen"] for c in info["candidates"]) == 1
    assert all(len(c["values"]) == 3 for c in info["candidates"])  # completed original + 2 retrainings
    means = [c["mean"] for c in info["candidates"]]
    assert means == sorted(means, reverse=True) and info["candidates"][0]["chosen"]
    chosen = info["candidates"][0]
    store = tracking.Store()
    version = store.client.get_model_version("seeded", str(info["version"]))
    assert version.tags["trial_id"] == chosen["trial_id"] and version.tags["seeds"] == "3"
    assert abs(float(version.tags["val_mean"]) - chosen["mean"]) < 1e-12 and "val_std" in version.tags
    assert "test_accuracy" in info["test_metrics"]
    parent = tracking.parent_runs(store, "seeded")[0]
    retrained = store.client.search_runs(
        [parent.info.experiment_id], filter_string="tags.`hpsearch.kind` = 'reseed'")
    assert len(retrained) == 4 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in retrained)
    assert len(api.results("seeded")) == 4  # retrainings are not search trials
