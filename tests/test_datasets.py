"""The image data sets, each read from a few tiny files in its real on-disk format by torchvision's own loaders.

torchvision checks the md5 of the official CIFAR-10 and Flowers102 files; these tests swap those checksum lists
for the tiny files' own (the only thing mocked), so the library's check itself stays in force.
"""

import hashlib
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from trainables._datasets import DATASETS, DatasetMissing, load_dataset


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def rows(x):
    """Each image's bytes: to find where a file's image went, whatever the split order."""
    return [image.numpy().tobytes() for image in x]


# ---- writers of the real on-disk formats -------------------------------------------------------------------


def write_idx(path, array):
    """The big-endian idx format: magic 2051 (images) or 2049 (labels), then each dimension, then uint8 data."""
    magic = 0x800 + array.ndim  # 0x08 = unsigned byte
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes())


def write_mnist(root, folder, rng):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = images, labels
    return data


def write_cifar10(root, monkeypatch, rng):
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    # Channel c only holds values in 85c..85c+84: a channel in the wrong place shows in its range.
    data = {}
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    for b, name in enumerate([*batches, "test_batch"]):
        n = 10 if name == "test_batch" else 4  # 20 training images, two of each class; 10 test images
        planes = rng.integers(0, 85, (n, 3, 1024)) + np.array([0, 85, 170])[:, None]
        labels = [(4 * b + i) % 10 for i in range(n)]
        # str keys: the official files are Python 2 pickles, whose keys torchvision's latin1 load turns into str.
        entry = {"data": planes.reshape(n, 3072).astype(np.uint8), "labels": labels, "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(entry))
        data[name] = entry
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(folder / name)] for name in batches])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})
    return data


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # one per class, so a decoded image shows its label


def write_flowers(root, monkeypatch):
    """15 jpgs of three classes and two sizes; splits of 6 / 3 / 6 (torchvision needs at least 2 per split)."""
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    labels = np.arange(15) % 3 + 1  # 1-based, as in imagelabels.mat
    for i, label in enumerate(labels, 1):
        size = (24, 40) if i % 2 else (36, 20)
        Image.new("RGB", size, COLOURS[label - 1]).save(folder / "jpg" / f"image_{i:05d}.jpg", quality=95)
    savemat(folder / "imagelabels.mat", {"labels": labels[None]})
    ids = np.arange(1, 16)
    savemat(folder / "setid.mat", {"trnid": ids[None, :6], "valid": ids[None, 6:9], "tstid": ids[None, 9:]})
    files = {key: (name, md5(folder / name)) for key, name in [("label", "imagelabels.mat"), ("setid", "setid.mat")]}
    monkeypatch.setattr(Flowers102, "_file_dict", {**Flowers102._file_dict, **files})
    return labels - 1


def write_class_folders(root, classes, per_class, rng, mode="RGB", sizes=((12, 12),)):
    """PNGs with random pixels under root/CLASS/; returns {image bytes as CHW: label}."""
    expected = {}
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
            chw = pixels.transpose(2, 0, 1) if mode == "RGB" else pixels[None]
            expected[chw.tobytes()] = label
    return expected


def write_segfolder(root, n, rng):
    """Pairs whose image's first pixel is their number; masks hold classes 0..2, half as L and half as P."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {}
    for i in range(n):
        image = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        image[0, 0] = i
        mask = rng.integers(0, 3, (10, 10), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"pair{i}.png")
        saved = Image.fromarray(mask, "P" if i % 2 else "L")
        if i % 2:
            saved.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # what the pixels show; their values stay 0..2
        saved.save(root / "masks" / f"pair{i}.png")
        masks[i] = mask
    return masks


# ---- the torchvision classification sets -------------------------------------------------------------------


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_formats_split_stratified_and_round_trip(tmp_path, name, folder):
    files = write_mnist(tmp_path, folder, np.random.default_rng(0))
    data = load_dataset(name, tmp_path, val_fraction=0.25)
    assert (data.name, data.task, data.split_seed) == (name, "classification", 0)
    assert {s: tuple(x.shape) for s, x in data.x.items()} == {
        "train": (30, 1, 28, 28),
        "val": (10, 1, 28, 28),
        "test": (20, 1, 28, 28),
    }
    for split in ("train", "val", "test"):
        assert data.x[split].dtype == torch.uint8 and data.x[split].is_contiguous()
        assert data.y[split].dtype == torch.int64
    assert set(data.y["train"].tolist()) == set(data.y["val"].tolist()) == set(range(10))
    assert torch.equal(data.x["test"][:, 0], torch.from_numpy(files["t10k"][0]))  # the test file, in its order
    assert data.y["test"].tolist() == files["t10k"][1].tolist()
    images, labels = files["train"]
    where = {image.tobytes(): i for i, image in enumerate(images)}
    seen = [where[r] for r in rows(torch.cat([data.x["train"], data.x["val"]]))]
    assert sorted(seen) == list(range(40))  # every training image once, pixels exact
    assert torch.cat([data.y["train"], data.y["val"]]).tolist() == labels[seen].tolist()
    assert len(data.classes) == 10 and data.source.endswith(f"{folder}/raw")

    small = load_dataset(name, tmp_path, val_fraction=0.25, limit=10)
    assert [len(y) for y in small.y.values()] == [10, 10, 10]
    assert all(set(y.tolist()) == set(range(10)) for y in small.y.values())  # a limit still holds every class


def test_cifar10_keeps_the_channel_order_and_its_checksums(tmp_path, monkeypatch):
    batches = write_cifar10(tmp_path, monkeypatch, np.random.default_rng(0))
    data = load_dataset("cifar10", tmp_path, val_fraction=0.25)
    assert [len(x) for x in data.x.values()] == [15, 5, 10]
    assert data.x["train"].shape[1:] == (3, 32, 32) and data.x["train"].is_contiguous()
    for c in range(3):  # R, G, B planes where the file put them
        assert 85 * c <= int(data.x["train"][:, c].min()) and int(data.x["train"][:, c].max()) < 85 * (c + 1)
    expected = torch.from_numpy(batches["test_batch"]["data"].reshape(10, 3, 32, 32))
    assert torch.equal(data.x["test"], expected)
    assert data.y["test"].tolist() == batches["test_batch"]["labels"]
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    images = np.concatenate([b["data"] for b in train]).reshape(20, 3, 32, 32)
    labels = [label for b in train for label in b["labels"]]
    where = {image.tobytes(): i for i, image in enumerate(images)}
    seen = [where[r] for r in rows(torch.cat([data.x["train"], data.x["val"]]))]
    assert sorted(seen) == list(range(20))
    assert torch.cat([data.y["train"], data.y["val"]]).tolist() == [labels[i] for i in seen]
    assert data.classes == [f"class{i}" for i in range(10)]
    monkeypatch.undo()  # the official checksums again: the tiny files no longer pass
    with pytest.raises(DatasetMissing, match="fail torchvision's checksum; replace them"):
        load_dataset("cifar10", tmp_path)


def test_flowers102_official_splits_resized(tmp_path, monkeypatch):
    labels = write_flowers(tmp_path, monkeypatch)
    data = load_dataset("flowers102", tmp_path, image_size=16)
    assert {s: tuple(x.shape) for s, x in data.x.items()} == {
        "train": (6, 3, 16, 16),
        "val": (3, 3, 16, 16),
        "test": (6, 3, 16, 16),
    }
    assert data.y["train"].tolist() == labels[:6].tolist() and data.y["test"].tolist() == labels[9:].tolist()
    for split in ("train", "val", "test"):
        colours = data.x[split].float().mean(dim=(2, 3))
        expected = torch.tensor([COLOURS[k] for k in data.y[split].tolist()], dtype=torch.float32)
        assert (colours - expected).abs().max() < 8  # each image decoded as its own class's colour
    assert len(data.classes) == 102
    assert load_dataset("flowers102", tmp_path, limit=2).x["test"].shape == (2, 3, 64, 64)  # the default size


# ---- your own folders --------------------------------------------------------------------------------------


def test_imagefolder_flat_is_stratified_and_round_trips(tmp_path):
    expected = write_class_folders(tmp_path, ["ant", "bee", "cat"], 10, np.random.default_rng(0))
    data = load_dataset("imagefolder", tmp_path, val_fraction=0.25)
    assert [len(y) for y in data.y.values()] == [18, 6, 6]  # test 20% of 30, validation 25% of the rest
    assert data.x["train"].shape[1:] == (3, 12, 12)  # all one size: kept
    assert data.classes == ["ant", "bee", "cat"]
    for split in ("train", "val", "test"):
        assert set(data.y[split].tolist()) == {0, 1, 2}
        assert [expected[r] for r in rows(data.x[split])] == data.y[split].tolist()
    other = load_dataset("imagefolder", tmp_path, val_fraction=0.25, split_seed=1)
    assert other.fingerprint != data.fingerprint


def test_imagefolder_train_test_layout_and_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    train = write_class_folders(tmp_path / "train", ["no", "yes"], 6, rng, mode="L")
    test = write_class_folders(tmp_path / "test", ["no", "yes"], 3, rng, mode="L")
    data = load_dataset("imagefolder", tmp_path, val_fraction=0.5)
    assert data.x["train"].shape == (6, 1, 12, 12)  # every image grayscale: one channel
    assert sorted(rows(data.x["test"])) == sorted(test)  # exactly the test folder
    assert all(r in train for r in rows(torch.cat([data.x["train"], data.x["val"]])))
    (tmp_path / "test" / "maybe").mkdir()
    Image.new("L", (12, 12)).save(tmp_path / "test" / "maybe" / "0.png")
    with pytest.raises(ValueError, match="different class folders"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_mixed_modes_and_sizes_become_rgb_squares(tmp_path):
    rng = np.random.default_rng(0)
    write_class_folders(tmp_path, ["a"], 5, rng, mode="L", sizes=((12, 12), (20, 10)))
    write_class_folders(tmp_path, ["b"], 5, rng, sizes=((12, 12),))
    data = load_dataset("imagefolder", tmp_path, image_size=8)
    assert all(x.shape[1:] == (3, 8, 8) for x in data.x.values())
    gray = data.x["train"][data.y["train"] == 0]
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])  # L copied to R, G, B
    assert load_dataset("imagefolder", tmp_path).x["test"].shape[2:] == (64, 64)  # sizes differ: the default


def test_segfolder_pairs_masks_and_resizes(tmp_path):
    masks = write_segfolder(tmp_path, 10, np.random.default_rng(0))
    data = load_dataset("segfolder", tmp_path, val_fraction=0.25)
    assert data.task == "segmentation" and data.classes == ["background", "class_1", "class_2"]
    assert [len(y) for y in data.y.values()] == [6, 2, 2]
    for split in ("train", "val", "test"):
        assert data.y[split].shape[1:] == (10, 10) and data.y[split].dtype == torch.int64
        for image, mask in zip(data.x[split], data.y[split]):
            assert mask.tolist() == masks[int(image[0, 0, 0])].tolist()  # the mask of its own image, exact
    small = load_dataset("segfolder", tmp_path, image_size=5)
    assert small.x["train"].shape[1:] == (3, 5, 5) and small.y["train"].shape[1:] == (5, 5)
    assert set(torch.cat([y.flatten() for y in small.y.values()]).tolist()) <= {0, 1, 2}  # nearest: no blends
    (tmp_path / "masks" / "pair3.png").unlink()
    with pytest.raises(ValueError, match=r"no mask under .*masks for pair3\.png"):
        load_dataset("segfolder", tmp_path)


# ---- data that needs no files ------------------------------------------------------------------------------


def test_shapes_are_made_from_the_split_seed():
    data, again, other = (load_dataset("shapes", None, split_seed=s) for s in (0, 0, 1))
    assert [len(x) for x in data.x.values()] == [1024, 256, 256]
    assert data.x["train"].shape[1:] == (3, 32, 32) and data.y["train"].shape[1:] == (32, 32)
    assert data.fingerprint == again.fingerprint != other.fingerprint
    assert torch.equal(data.x["val"], again.x["val"]) and torch.equal(data.y["val"], again.y["val"])
    assert set(data.y["train"].unique().tolist()) == {0, 1, 2, 3} and data.classes[0] == "background"
    small = load_dataset("shapes", None, limit=5, image_size=16)
    assert [tuple(x.shape) for x in small.x.values()] == [(5, 3, 16, 16)] * 3
    assert torch.equal(load_dataset("shapes", None, limit=5).x["test"], data.x["test"][:5])  # a limit is a prefix


def test_digits_splits_match_the_digits_trainables():
    from sklearn.datasets import load_digits

    from trainables._digits_pairs import DigitsData

    digits = load_digits()
    for seed in (0, 3):
        data, reference = load_dataset("digits", None, split_seed=seed), DigitsData(seed)
        for split, idx in reference.indices.items():
            assert data.y[split].tolist() == digits.target[idx].tolist()
            pixels = np.round(digits.data[idx] * 255 / 16).reshape(-1, 1, 8, 8)
            assert data.x[split].numpy().tolist() == pixels.tolist()


# ---- missing data, statistics and their cache --------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "flowers102", "imagefolder", "segfolder"])
def test_missing_data_is_one_line_naming_where(tmp_path, name):
    with pytest.raises(DatasetMissing) as caught:
        load_dataset(name, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and message.startswith(f"{name}: ")
    assert ("download: true" in message) == (name not in ("imagefolder", "segfolder"))
    with pytest.raises(DatasetMissing, match="no data root given"):
        load_dataset(name, None)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: mnist, fashion-mnist") as caught:
        load_dataset("imagenet", None)
    assert all(name in str(caught.value) for name in DATASETS)


def test_statistics_come_from_the_training_split_and_are_cached(tmp_path):
    write_class_folders(tmp_path, ["a", "b"], 10, np.random.default_rng(0))
    data = load_dataset("imagefolder", tmp_path)
    train = data.x["train"].double() / 255
    assert data.mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert data.std == pytest.approx(train.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)
    assert data.mean != pytest.approx((torch.cat(list(data.x.values())).double() / 255).mean(dim=(0, 2, 3)).tolist())

    cache = tmp_path / ".hpsearch" / f"stats-imagefolder-{data.fingerprint}.json"
    written = cache.stat().st_mtime_ns
    again = load_dataset("imagefolder", tmp_path)  # the cache folder is not taken for a class
    assert again.mean == data.mean and cache.stat().st_mtime_ns == written
    cache.write_text(json.dumps({"mean": [0.25] * 3, "std": [0.5] * 3}))
    assert load_dataset("imagefolder", tmp_path).mean == (0.25, 0.25, 0.25)  # read from the file


@pytest.mark.parametrize("how", ["read-only root", "cache path taken by a file"])
def test_an_unwritable_root_still_loads(tmp_path, how):
    root = tmp_path / "data"
    write_class_folders(root, ["a", "b"], 5, np.random.default_rng(0))
    if how == "read-only root":
        if os.geteuid() == 0:
            pytest.skip("root writes to a read-only folder anyway")
        root.chmod(0o555)
    else:
        (root / ".hpsearch").write_text("")
    try:
        data = load_dataset("imagefolder", root)
    finally:
        root.chmod(0o755)
    assert len(data.mean) == 3 and not (root / ".hpsearch").is_dir()
