"""`hpsearch models` and `hpsearch rollback` on a registry holding a single model and an ensemble: the kind,
the member count, the members in JSON, and rollback naming the ensemble it restores or demotes. The versions
are written with the real MLflow client, with the tags promotion writes."""

import json

import pytest

from tests.test_startup import query

MEMBERS = [
    {
        "name": f"t{i}-fold{i + 1}",
        "trial_id": f"t{i}",
        "run_id": f"run{i}",
        "seed": None,
        "fold": f"{i + 1}/3",
        "weight": w,
        "checkpoint_sha256": f"{i}" * 64,
    }
    for i, w in enumerate([0.5, 0.3, 0.2])
]


@pytest.fixture
def registry(home, tmp_path):
    """Model `digits`: version 1 single (tagged before ensembles existed), version 2 an ensemble of 3 and
    @champion, version 1 @previous."""
    import tracking

    client = tracking.Store().client
    client.create_registered_model("digits")
    lineage = {"study": "digits-cnn", "val_value": "0.9895833333333334", "test_accuracy": "0.9701492537313433"}
    client.create_model_version("digits", str(tmp_path / "one"), tags={**lineage, "trial_id": "t7"})
    ensemble = {
        **lineage,
        "trial_id": "t0",
        "model_kind": "ensemble",
        "members": json.dumps(MEMBERS),
        "ensemble_size": "3",
        "held_out_single": "0.9652777777777778",
        "held_out_ensemble": "0.9791666666666666",
    }
    client.create_model_version("digits", str(tmp_path / "three"), tags=ensemble)
    client.set_registered_model_alias("digits", "champion", "2")
    client.set_registered_model_alias("digits", "previous", "1")
    return home


def test_models_shows_the_kind_and_an_ensembles_member_count(registry, cli):
    code, out, err = cli("models")
    assert code == 0, err
    header, *lines = out.strip().splitlines()
    assert header.split()[:8] == ["name", "version", "aliases", "kind", "members", "study", "trial_id", "val_value"]
    rows = {line.split()[1]: line.split() for line in lines}
    assert rows["2"][2:5] == ["champion", "ensemble", "3"]
    assert rows["1"][2:5] == ["previous", "single", "-"]
    assert rows["1"][7] == "0.9896" and "0.98958" not in out  # the tag's full float is rounded for reading


def test_models_json_holds_the_members_and_the_held_out_values(registry, cli):
    code, out, err = cli("models", "--format", "json")
    assert code == 0, err
    rows = {row["version"]: row for row in json.loads(out)}
    assert rows[2]["kind"] == "ensemble" and rows[2]["ensemble_size"] == 3 and rows[2]["members"] == MEMBERS
    assert rows[2]["held_out_single"] == 0.9652777777777778 and rows[2]["held_out_ensemble"] == 0.9791666666666666
    assert rows[1]["kind"] == "single" and rows[1]["members"] is None and rows[1]["ensemble_size"] is None


def test_rollback_says_which_version_is_an_ensemble(registry, cli):
    code, out, err = cli("rollback", "digits")
    assert code == 0, err
    assert out.strip() == "digits@champion is version 1 again (version 2, an ensemble of 3 members, is now @previous)"
    code, out, err = cli("rollback", "digits")
    assert code == 0, err
    assert out.strip() == "digits@champion is version 2 again, an ensemble of 3 members (version 1 is now @previous)"

    import tracking

    client = tracking.Store().client  # what the registry holds, not only what was printed
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("digits", "previous").version) == "1"


@pytest.mark.parametrize("args", [["models"], ["models", "--format", "json"], ["rollback", "digits"]])
def test_models_and_rollback_import_neither_torch_nor_ray(registry, args):
    code, out, err, heavy = query(registry, *args)
    assert code == 0 and "ensemble" in out, out + err
    assert heavy == [], f"`hpsearch {' '.join(args)}` imported {heavy}"
