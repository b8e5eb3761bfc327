"""Memory stays flat over a night (issue 17): what a reused worker keeps between trials is bounded, and the
driver holds no data set while the sweep runs. (The RSS over a 300-trial sweep: benchmarks/memory_sweep.py.)"""

import gc
import io
import weakref

import torch
import yaml
from torch import nn

from search import api
from trainables import MemoryReporter, _device, _reporter, _vision, get_trainable, release_caches
from trainables._lru import DATA_CONFIGS_KEPT, LRU

CPU = torch.device("cpu")


def test_lru_evicts_the_least_recently_used_entry_past_its_bound():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache["a"] == 1  # a is now the most recently used
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"]
    built = []
    assert cache.get_or_build("c", lambda: built.append("c")) == 3 and built == []
    assert cache.get_or_build("d", lambda: built.append("d") or 4) == 4
    assert cache.keys() == ["c", "d"] and built == ["d"]


def test_gpu_share_policy_keeps_the_bytes_under_a_share_of_what_the_cache_could_use():
    cache = LRU(10, nbytes=lambda size: size)  # each value is its own size in bytes
    free = 1000  # bytes the GPU has free; each put below takes its value's size from it
    cache.put("a", 300, cache.budget(free, 0.5))  # budget 0.5 * (1000 + 0) = 500
    free -= 300
    cache.put("b", 150, cache.budget(free, 0.5))  # 0.5 * (700 + 300) = 500: 450 fits
    free -= 150
    assert cache.keys() == ["a", "b"] and cache.bytes == 450
    assert cache.budget(free, 0.5) == 500  # what the cache holds counts as room it could have
    cache.put("c", 300, cache.budget(free, 0.5))  # 450 + 300 > 500: a, the least recently used, goes
    assert cache.keys() == ["b", "c"] and cache.bytes == 450  # (free is unchanged: c took what a gave back)
    cache.put("d", 400, cache.budget(free, 0.5))  # b and c both go: 400 alone fits in 500
    assert cache.keys() == ["d"] and cache.bytes == 400
    for i in range(20):  # without a budget (the CPU) the entry bound alone holds
        cache.put(i, 1)
    assert len(cache) == 10


def test_resident_data_and_compiled_models_stay_bounded_over_many_keys():
    _device._RESIDENT.clear()
    _device._COMPILED.clear()
    first = torch.zeros(1000)
    gone = weakref.ref(first)
    assert _device.resident(first, CPU, ("split", 0)) is first
    del first
    for i in range(1, 50):
        t = torch.full((1000,), float(i))
        assert _device.resident(t, CPU, ("split", i)) is t
    assert len(_device._RESIDENT) == 4 * DATA_CONFIGS_KEPT
    assert (("split", 49), "cpu") in _device._RESIDENT and (("split", 0), "cpu") not in _device._RESIDENT
    gc.collect()
    assert gone() is None  # evicted, and nothing else holds it

    for width in range(1, 30):  # a sweep searching the architecture
        model = nn.Linear(4, width)
        key = _device.architecture_key(model, CPU, (8, 4), "fp32")
        module, _, new = _device.compiled(model, key, cudagraphs=False)
        assert new and module is model
        if width == 1:
            gone = weakref.ref(model)
    del model, module
    assert len(_device._COMPILED) == _device.COMPILED_KEPT
    gc.collect()
    assert gone() is None
    fresh = nn.Linear(4, 29)  # the last architecture again: the kept module, with the fresh weights copied in
    module, _, new = _device.compiled(fresh, key, cudagraphs=False)
    assert not new and module is not fresh and torch.equal(module.weight, fresh.weight)


def test_a_worker_training_many_data_configurations_keeps_only_the_last_few():
    release_caches()
    trainable = get_trainable("digits-autoencoder")
    first = None
    for limit in range(20, 27):  # a new data configuration per trial, as a searched image_size makes
        config = {"epochs": 1, "limit": limit, "batch_size": 8, "kind": "mlp", "latent": 4}
        reporter = MemoryReporter(metric="val_loss", mode="min")
        trainable.train(config, reporter)
        assert len(reporter.results) == 1
        if first is None:
            (data_set,) = (v for _, v in _vision._DATA_SETS.items())
            first = weakref.ref(data_set)
            del data_set
    assert len(_vision._DATA_SETS) == DATA_CONFIGS_KEPT and len(_reporter._WORKER_CACHE) == DATA_CONFIGS_KEPT
    assert len(_device._RESIDENT) == 4 * DATA_CONFIGS_KEPT
    gc.collect()
    assert first() is None  # the first configuration's data set has left the process


def test_the_driver_holds_no_data_set_after_planning(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    path = tmp_path / "held.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "held",
                "trainable": "digits-autoencoder",
                "trials": 1,
                "asha": None,
                "max_concurrent": 1,
                "space": {"latent": {"type": "int", "low": 4, "high": 8}},
                "fixed": {"epochs": 1, "limit": 40, "batch_size": 8, "kind": "mlp"},
            }
        )
    )
    release_caches()
    planned = api.plan(str(path))
    (data_set,) = (v for _, v in _vision._DATA_SETS.items())  # planning read it (data_info: fingerprint)
    planning_copy = weakref.ref(data_set)
    del data_set
    outcome = api.execute(planned, out=io.StringIO())
    assert outcome.exit_code == 0 and outcome.best_trial is not None
    gc.collect()
    # The test evaluation after the sweep read the same configuration afresh: had the driver kept the planning
    # copy through the sweep, it would have been reused, and be alive now.
    assert planning_copy() is None
    assert len(_vision._DATA_SETS) == 1
