"""Data sets of the user's own image files: imagefolder (a folder per class) and segfolder (images with masks).

Each file is decoded once, on threads, straight into one uint8 tensor per split, after one look at every file's
header has settled the mode and size they all become.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._loading import SPLITS, DatasetMissing, Loaded, Request, head, hold_out, three_way

TEST_FRACTION = 0.2  # of a folder with no test split of its own: held out for the final test, never searched on
FOLDER_SIZE = 64  # pixels a side, for a folder whose images do not all share one size
GRAY_MODES = ("1", "L")  # PIL modes kept as one channel, when every image of the set is one of them
MASK_MODES = ("L", "P")  # PIL modes whose pixel values are class indices


# ---- a folder per class ------------------------------------------------------------------------------------


def _folder_dataset(req: Request, root: Path) -> Any:
    from torchvision.datasets import ImageFolder

    class Visible(ImageFolder):
        """ImageFolder that skips hidden folders: our own .hpsearch cache, .ipynb_checkpoints and the like."""

        def find_classes(self, directory):
            classes, _ = super().find_classes(directory)
            classes = [c for c in classes if not c.startswith(".")]
            return classes, {c: i for i, c in enumerate(classes)}

    layout = f"{req.root}/CLASS/*.png|jpg, or {req.root}/train/CLASS/.. and {req.root}/test/CLASS/.."
    if not _has_subfolders(root):
        raise DatasetMissing(f"{req.name}: no class folders under {root} (expected {layout}); set --data-root")
    try:
        return Visible(root, loader=str)  # loader=str: paths only, decoded once below
    except FileNotFoundError as exc:  # a class folder with no image in it
        raise DatasetMissing(f"{req.name}: {exc} (expected {layout})") from None


def _has_subfolders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def imagefolder(req: Request) -> Loaded:
    """Images converted to RGB, or kept one channel when every image is grayscale. Without image_size they keep
    their size if all share one, else become FOLDER_SIZE squares (shorter side resized, centre cropped)."""
    root = req.root
    if _has_subfolders(root / "train") and _has_subfolders(root / "test"):
        train, test = _folder_dataset(req, root / "train"), _folder_dataset(req, root / "test")
        if train.classes != test.classes:
            raise ValueError(
                f"{req.name}: {root}/train and {root}/test hold different class folders: "
                f"{train.classes} and {test.classes}"
            )
        kept, val = hold_out(np.arange(len(train)), np.asarray(train.targets), req.val_fraction, req.split_seed)
        parts = {"train": (train, kept), "val": (train, val), "test": (test, np.arange(len(test)))}
    else:
        ds = _folder_dataset(req, root)
        split = three_way(np.asarray(ds.targets), len(ds), TEST_FRACTION, req.val_fraction, req.split_seed)
        parts = {name: (ds, idx) for name, idx in split.items()}
    paths, y = {}, {}
    for name, (ds, idx) in parts.items():
        labels = np.asarray(ds.targets, dtype=np.int64)
        idx = head(idx, labels[idx], req.limit)
        paths[name] = [ds.samples[i][0] for i in idx]
        y[name] = torch.from_numpy(labels[idx])
    mode, size = _survey([p for name in SPLITS for p in paths[name]], req.image_size)
    x = {name: decode(paths[name], mode, size) for name in SPLITS}
    return "classification", x, y, list(parts["train"][0].classes), str(root)


# ---- decoding ----------------------------------------------------------------------------------------------


def _survey(paths: Sequence[str], image_size: int | None) -> tuple[str, int | tuple[int, int]]:
    """One look at every file's header (no decoding): the mode and size they will all be decoded to."""
    from PIL import Image

    modes, sizes = set(), set()
    for path in paths:
        with Image.open(path) as img:
            modes.add(img.mode)
            sizes.add(img.size)
    mode = "L" if modes <= set(GRAY_MODES) else "RGB"
    if image_size is None and len(sizes) == 1:
        width, height = sizes.pop()
        return mode, (height, width)
    return mode, image_size or FOLDER_SIZE


def decode(paths: Sequence[str], mode: str | None, size: int | tuple[int, int], nearest: bool = False) -> torch.Tensor:
    """Decode each file once into one uint8 (N, C, H, W) tensor, on threads (PIL and torch release the GIL).

    An int size is a square: shorter side resized to it, then centre cropped. A (height, width) is kept as is.
    mode None keeps the file's own values (a mask's class indices); `nearest` resizes without blending them.
    """
    from PIL import Image
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    height, width = (size, size) if isinstance(size, int) else size
    out = torch.empty((len(paths), 3 if mode == "RGB" else 1, height, width), dtype=torch.uint8)

    def read(i: int) -> None:
        with Image.open(paths[i]) as img:
            if mode is not None:
                img.draft(mode, (width, height))  # JPEG: decode at 1/2..1/8 scale, never below the size wanted
                img = img.convert(mode)
            pixels = F.pil_to_tensor(img)
        if pixels.shape[1:] != (height, width):
            interpolation = InterpolationMode.NEAREST if nearest else InterpolationMode.BILINEAR
            pixels = F.resize(pixels, [min(height, width)], interpolation=interpolation, antialias=not nearest)
            pixels = F.center_crop(pixels, [height, width])
        out[i] = pixels

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(read, range(len(paths))))
    return out


# ---- images with their masks -------------------------------------------------------------------------------


def segfolder(req: Request) -> Loaded:
    """Pairs images/NAME.* and masks/NAME.png; test 20% and then validation held out at random by split_seed."""
    from PIL import Image

    images_dir, masks_dir = req.root / "images", req.root / "masks"
    image_suffixes = (".png", ".jpg", ".jpeg")
    images = {p.stem: p for p in sorted(images_dir.glob("*")) if p.suffix.lower() in image_suffixes}
    masks = {p.stem: p for p in sorted(masks_dir.glob("*")) if p.suffix.lower() == ".png"}
    if not images:
        raise DatasetMissing(
            f"{req.name}: no images under {images_dir} (expected images/NAME.png with masks/NAME.png, "
            "each mask pixel a class index 0..K-1); set --data-root"
        )
    for have, lack, other in ((images, masks, masks_dir), (masks, images, images_dir)):
        unpaired = sorted(have.keys() - lack.keys())
        if unpaired:
            names = ", ".join(have[s].name for s in unpaired[:5]) + (" ..." if len(unpaired) > 5 else "")
            kind = "mask" if other == masks_dir else "image"
            raise ValueError(
                f"{req.name}: no {kind} under {other} for {names} (each images/NAME.* needs a masks/NAME.png)"
            )
    stems = sorted(images)
    for stem in stems:
        with Image.open(images[stem]) as img, Image.open(masks[stem]) as mask:
            if mask.mode not in MASK_MODES:
                raise ValueError(
                    f"{req.name}: {masks[stem]} is a {mask.mode} image; a mask must be 8-bit grayscale (L) "
                    "or palette (P) with a class index per pixel"
                )
            if mask.size != img.size:
                raise ValueError(f"{req.name}: {masks[stem]} is {mask.size}, its image {img.size} (width, height)")
    split = three_way(None, len(stems), TEST_FRACTION, req.val_fraction, req.split_seed)
    chosen = {name: [stems[i] for i in head(idx, None, req.limit)] for name, idx in split.items()}
    mode, size = _survey([str(images[s]) for name in SPLITS for s in chosen[name]], req.image_size)
    x, y = {}, {}
    for name in SPLITS:
        x[name] = decode([str(images[s]) for s in chosen[name]], mode, size)
        y[name] = decode([str(masks[s]) for s in chosen[name]], None, size, nearest=True)[:, 0].long()
    n_classes = max(int(t.max()) for t in y.values() if t.numel()) + 1
    classes = ["background"] + [f"class_{k}" for k in range(1, n_classes)]
    return "segmentation", x, y, classes, str(req.root)
