"""Finding a dataset's files in the folders users keep them in (torchvision roots, the authors' archives)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from ..errors import DatasetError

# what a folder holds, to point a user at the right spec when they name the wrong one
KNOWN = {"cifar-10-batches-py": "cifar10", "cifar-10-batches-bin": "cifar10", "cifar-100-python": "cifar100",
         "cifar-100-binary": "cifar100", "MNIST": "mnist", "FashionMNIST": "fashion-mnist",
         "train_32x32.mat": "svhn", "test_32x32.mat": "svhn", "fer2013.csv": "fer2013", "fer2013": "fer2013"}
ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz", "cifar-100-python.tar.gz",
            "cifar-100-binary.tar.gz", "fer2013.tar.gz")


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way a dataset's files are laid out: a folder below the root and the files it must hold.

    Each entry of ``files`` is a tuple of alternative names (``("x", "x.gz")``); the first
    one present is used.
    """

    folder: str
    files: tuple[tuple[str, ...], ...]
    version: str = ""

    def find(self, root: Path) -> list[Path] | None:
        """The files of this layout under ``root``, or None when one is missing."""
        base = root / self.folder if self.folder else root
        found = []
        for names in self.files:
            hit = next((base / n for n in names if (base / n).is_file()), None)
            if hit is None:
                return None
            found.append(hit)
        return found

    def describe_files(self) -> str:
        """The files as ``a[.gz]|b and c``, for messages."""
        def alternatives(names: tuple[str, ...]) -> str:
            shown = [n + "[.gz]" if n + ".gz" in names else n for n in names if not (n.endswith(".gz") and n[:-3]
                                                                                      in names)]
            return "|".join(shown)

        return " and ".join(alternatives(names) for names in self.files)


def locate(root: Path, layouts: Sequence[Layout], what: str, kind: str) -> tuple[Layout, list[Path]]:
    """The first layout whose files all exist under ``root``, with those files.

    Raises
    ------
    DatasetError
        No layout fits: the message lists what was looked for, and which other dataset the
        folder seems to hold, or an archive to extract.
    """
    if not root.is_dir():
        raise DatasetError(f"{kind}:{root}: not a folder; give the folder that holds the {what} files.")
    for layout in layouts:
        files = layout.find(root)
        if files is not None:
            return layout, files
    groups: dict[str, list[str]] = {}
    for lay in layouts:
        groups.setdefault(lay.describe_files(), []).append(f"{lay.folder}/" if lay.folder else "the folder itself")
    looked = "; ".join(f"{files} in {', '.join(folders)}" for files, folders in groups.items())
    raise DatasetError(f"{kind}:{root}: no {what} found (looked for {looked}).{hint(root, kind)}")


def hint(root: Path, kind: str) -> str:
    """A pointer at what ``root`` does hold: another dataset's folder, or an archive to extract."""
    others = sorted({k for name, k in KNOWN.items() if k != kind and (root / name).exists()})
    if others:
        return f" The folder holds {' and '.join(others)} data: use {others[0]}:{root}."
    archives = [a for a in ARCHIVES if (root / a).is_file()]
    if archives:
        return f" Found the archive {archives[0]}: extract it first (tar xzf {archives[0]})."
    return ""


def check_file(path: Path, what: str) -> Path:
    """``path`` if it is a non-empty file, else a one-line error saying what it is instead."""
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; give the {what} file itself.")
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty (0 bytes); the download or copy was probably interrupted.")
    return path


@dataclasses.dataclass
class Loaded:
    """What a reader returns: inputs, labels, class names and where they came from."""

    x: object
    y: object
    classes: list[str]
    source: str
