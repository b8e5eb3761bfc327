"""The training loop's parts on the CPU: on-device preparation, optimizers, schedules, task metrics."""

import math

import pytest
import torch

from trainables import MemoryReporter, get_trainable
from trainables._device import Prep
from trainables._optim import Schedule, make_optimizer
from trainables._tasks import Score, loss_fn

FAST = {"epochs": 4, "batch_size": 64, "train_subset": 256}


def test_prep_normalises_and_moves_masks_with_their_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8)
    masks = (x[:, 0] > 127).long()  # a mask read off the image itself: it must follow every flip and crop
    plain, same, pixels = Prep(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))(x, masks)
    assert torch.equal(same, masks) and torch.allclose(pixels, x.float() / 255)
    assert torch.allclose(plain[:, 1], (x[:, 1].float() / 255 - 0.4) / 0.2)
    torch.manual_seed(1)
    out, moved, pixels = Prep(mean=(0.5,) * 3, std=(0.2,) * 3, flip=True, crop=2)(x, masks, train=True)
    assert out.shape == x.shape and moved.shape == masks.shape
    assert not torch.equal(moved, masks)  # something was flipped or shifted ...
    assert torch.equal(moved, (pixels[:, 0] > 127 / 255).long())  # ... and the mask moved with its image
    assert not torch.equal(Prep(mean=(0.5,) * 3, std=(0.2,) * 3)(x, masks, train=True)[0], out)  # off: untouched


def test_a_keyed_split_is_made_resident_once_per_worker_with_images_and_labels_apart():
    from trainables import _device
    from trainables._loop import Split, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = (x.float().mean(dim=(1, 2, 3)) > 127.5).long()
    prep = Prep(mean=(0.5,), std=(0.3,), flip=True, crop=1)

    def run():
        reporter = MemoryReporter(seed=0, metric="val_accuracy", mode="max")
        fit(
            {"epochs": 2, "batch_size": 32, "compile": "off"},
            reporter,
            lambda c: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)),
            Split(x[:64], y[:64], key=("keyed", "train")),
            Split(x[64:], y[64:], key=("keyed", "val")),
            torch.device("cpu"),
            prep=prep,
        )
        return [(r["train_loss"], r["val_loss"]) for r in reporter.results]

    first = run()
    images, labels = (_device._RESIDENT[((("keyed", "train"), part), "cpu")] for part in ("x", "y"))
    assert images.dtype == torch.uint8 and images.shape == (64, 1, 8, 8) and labels.dtype == torch.int64
    assert run() == first and _device._RESIDENT[((("keyed", "train"), "x"), "cpu")] is images


def test_colour_jitter_changes_images_within_range_and_only_when_training():
    x = torch.full((8, 3, 4, 4), 100, dtype=torch.uint8)
    x[:, 0] = 200
    prep = Prep(mean=(0.0,) * 3, std=(1.0,) * 3, jitter=0.4)
    _, _, evaluated = prep(x, None)
    assert torch.allclose(evaluated, x.float() / 255)
    torch.manual_seed(0)
    jittered, _, _ = prep(x, None, train=True)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, x.float() / 255)


@pytest.mark.parametrize(
    "name, cls, nesterov",
    [
        ("sgd", torch.optim.SGD, False),
        ("nesterov", torch.optim.SGD, True),
        ("adam", torch.optim.Adam, None),
        ("adamw", torch.optim.AdamW, None),
        ("rmsprop", torch.optim.RMSprop, None),
    ],
)
def test_each_optimizer_is_what_its_name_says(name, cls, nesterov):
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = make_optimizer(params, {"optimizer": name, "lr": 0.1, "weight_decay": 0.0, "momentum": 0.8})
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.1
    if nesterov is not None:
        assert opt.param_groups[0]["nesterov"] is nesterov and opt.param_groups[0]["momentum"] == 0.8


def test_bad_optimizer_settings_say_what_is_valid():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        make_optimizer(params, {"optimizer": "nesterov", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.0})
    with pytest.raises(ValueError, match="one of sgd, nesterov, adam, adamw, rmsprop, not 'lbfgs'"):
        make_optimizer(params, {"optimizer": "lbfgs", "lr": 0.1, "weight_decay": 0.0})


def _lrs(config, steps_per_epoch=10, values=None):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = Schedule(opt, {"epochs": 4, **config}, steps_per_epoch, "max")
    seen = []
    for epoch in range(4):
        for _ in range(steps_per_epoch):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.after_step()
        schedule.after_epoch(values[epoch] if values else 0.0)
    return seen


def test_schedules_shape_the_learning_rate():
    assert set(_lrs({"schedule": "none"})) == {1.0}
    warm = _lrs({"schedule": "warmup_cosine", "warmup_epochs": 1})
    assert warm[0] == pytest.approx(0.01) and max(warm) == pytest.approx(1.0) and warm.index(1.0) == 10
    assert warm[-1] < 0.01 and all(a >= b for a, b in zip(warm[10:], warm[11:]))  # cosine down after warmup
    cosine = _lrs({"schedule": "cosine"})
    assert cosine[0] == 1.0 and cosine[20] == pytest.approx(0.5, abs=0.02)
    step = _lrs({"schedule": "step", "lr_step_epochs": 2, "lr_gamma": 0.1})
    assert step[0] == 1.0 and step[19] == 1.0 and step[20] == pytest.approx(0.1)
    plateau = _lrs({"schedule": "plateau", "lr_gamma": 0.5, "lr_plateau_patience": 1}, values=[0.5, 0.5, 0.5, 0.5])
    assert plateau[0] == 1.0 and plateau[-1] == 0.5  # two epochs without improvement (mode max): halved once
    with pytest.raises(ValueError, match="schedule must be one of"):
        _lrs({"schedule": "exponential"})


def test_a_schedule_continues_from_a_checkpoint():
    trainable = get_trainable("digits-mlp")
    config = {**FAST, "schedule": "cosine"}
    whole = MemoryReporter(seed=0)
    trainable.train(config, whole)
    assert whole.checkpoints[0]["progress"]["epoch"] == 1
    resumed = MemoryReporter(seed=0, checkpoint=whole.checkpoints[0])
    trainable.train(config, resumed)
    assert [r["epoch"] for r in resumed.results] == [2, 3, 4]
    assert [r["lr"] for r in resumed.results] == pytest.approx([r["lr"] for r in whole.results[1:]])
    assert whole.results[-1]["lr"] < whole.results[0]["lr"]


def test_label_smoothing_raises_the_loss_of_a_confident_right_answer():
    logits, y = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([0])
    assert loss_fn("classification", {"label_smoothing": 0.2})(logits, y) > loss_fn("classification", {})(logits, y)


def test_segmentation_scores_are_iou_and_dice_over_classes():
    target = torch.tensor([[[0, 0, 1, 1]]])  # one image, 1x4 pixels
    out = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 1]]]), 2).permute(0, 3, 1, 2).float() * 10
    score = Score("segmentation", loss_fn("segmentation", {}), torch.device("cpu"))
    score.add(out, target)
    result = score.result()
    # class 0: hit 1, union 2 -> IoU 1/2, Dice 2/3; class 1: hit 2, union 3 -> IoU 2/3, Dice 4/5
    assert result["iou"] == pytest.approx((1 / 2 + 2 / 3) / 2) and result["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["accuracy"] == pytest.approx(0.75)


def test_reconstruction_scores_are_mse_and_psnr():
    target = torch.zeros(2, 1, 2, 2)
    score = Score("reconstruction", loss_fn("reconstruction", {"recon_loss": "l1"}), torch.device("cpu"))
    score.add(torch.full((2, 1, 2, 2), 0.1), target)
    result = score.result()
    assert result["mse"] == pytest.approx(0.01) and result["psnr"] == pytest.approx(20.0)
    assert result["loss"] == pytest.approx(0.1)  # the configured L1 loss
    with pytest.raises(ValueError, match="recon_loss must be mse or l1"):
        loss_fn("reconstruction", {"recon_loss": "huber"})


def test_per_class_accuracy_for_the_best_model():
    score = Score("classification", loss_fn("classification", {}), torch.device("cpu"))
    score.add(torch.eye(3)[[0, 0, 2, 2]] * 5, torch.tensor([0, 1, 2, 2]))
    result = score.result(per_class=True)
    assert result["accuracy_class_0"] == 1.0 and result["accuracy_class_1"] == 0.0 and result["accuracy_class_2"] == 1.0
    assert math.isclose(result["accuracy"], 0.75)


def test_a_split_kept_on_the_host_is_fed_by_dataloader_workers_in_the_epochs_order():
    from trainables._device import HostBatches

    x = torch.arange(40 * 3, dtype=torch.uint8).view(40, 1, 1, 3)
    y = torch.arange(40)
    feed = HostBatches(x, y, torch.device("cpu"), workers=2)
    for seed in (0, 1):  # persistent workers, a new order each epoch
        order = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
        batches = list(feed.epoch(order, batch_size=16, steps=2))  # the last partial batch dropped
        assert [len(b[1]) for b in batches] == [16, 16]
        assert torch.equal(torch.cat([b[1] for b in batches]), order[:32])
        assert torch.equal(torch.cat([b[0] for b in batches]), x[order[:32]])


def test_a_split_smaller_than_one_batch_trains_eagerly_on_its_partial_batch_even_with_compile_on():
    from trainables._loop import Split, fit

    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    y = (x.float().mean(dim=(1, 2, 3)) > 127.5).long()
    reporter = MemoryReporter(seed=0, metric="val_accuracy", mode="max")
    fit(
        {"epochs": 2, "batch_size": 64, "compile": "on"},
        reporter,
        lambda c: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)),
        Split(x[:30], y[:30]),
        Split(x[30:], y[30:]),
        torch.device("cpu"),
        prep=Prep(mean=(0.5,), std=(0.3,)),
    )
    assert [r["epoch"] for r in reporter.results] == [1, 2] and "compile_s" not in reporter.results[0]
    assert reporter.results[0]["samples_per_s"] > 0  # its 30 examples, in one partial batch
