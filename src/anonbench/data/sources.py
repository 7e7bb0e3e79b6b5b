"""The files of each data source, their checksums and their public download URLs.

coco-mini's checksum list (``checksums/coco-mini.sha256``) is metadata computed
from the files; the images themselves are never part of the repository. Full
COCO 2017 is three official archives with their published MD5 sums. A
``coco-folder`` source is a user's own COCO-format folder: nothing is published
about it, so its listing and sha256 sums are taken from the folder itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from anonbench.data.download import file_digest

# coco-mini's public sources, at the revisions its README names (shared/data/coco-mini/README.md).
COCO128_BASE = "https://raw.githubusercontent.com/developer0hye/COCO128/47a3de30aaf7ad1c02105bd80598fb03ac0d0789/"
TINY_COCO_BASE = (
    "https://raw.githubusercontent.com/lizhogn/tiny_coco_dataset/68523ddd6c27f9ba5d2f0caf7f6fe95cc2c99311/tiny_coco/"
)
COCO_IMAGES_BASE = "http://images.cocodataset.org/"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: where it goes, its digest, and the URLs to try in order."""

    path: str
    digest: str
    algorithm: str
    urls: tuple[str, ...]

    @property
    def is_archive(self) -> bool:
        """Archives are extracted into the COCO layout after download."""
        return self.path.endswith(".zip")


def _coco_mini_urls(path: str) -> tuple[str, ...]:
    base = COCO128_BASE if "train2017" in path else TINY_COCO_BASE
    official = (COCO_IMAGES_BASE + path,) if path.endswith(".jpg") else ()
    return (base + path, *official)


def coco_mini_files() -> list[RemoteFile]:
    """Every coco-mini file with its sha256, from the committed checksum list."""
    listing = resources.files("anonbench.data").joinpath("checksums/coco-mini.sha256").read_text()
    files = []
    for line in listing.splitlines():
        if line.strip():
            digest, path = line.split(maxsplit=1)
            files.append(RemoteFile(path, digest, "sha256", _coco_mini_urls(path)))
    return files


def coco2017_files() -> list[RemoteFile]:
    """The three official COCO 2017 archives with their published MD5 sums."""
    return [
        RemoteFile(
            "train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", "md5", (COCO_IMAGES_BASE + "zips/train2017.zip",)
        ),
        RemoteFile("val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", "md5", (COCO_IMAGES_BASE + "zips/val2017.zip",)),
        RemoteFile(
            "annotations_trainval2017.zip",
            "f4bbac642086de4f52a3fdda2de5fa2c",
            "md5",
            (COCO_IMAGES_BASE + "annotations/annotations_trainval2017.zip",),
        ),
    ]


def coco_folder_files(folder: Path, splits: tuple[str, ...]) -> list[RemoteFile]:
    """Every file a COCO-format folder holds for ``splits``, with its sha256 computed now.

    That is ``annotations/instances_<split>.json`` and every file under ``<split>/``
    (sub-folders included, as COCO file names may have them); anything else in
    the folder is not part of the dataset.

    Raises:
        FileNotFoundError: Naming the annotation file or image folder a split lacks.
    """
    paths = []
    for split in splits:
        annotations, images = folder / "annotations" / f"instances_{split}.json", folder / split
        for needed in (annotations, images):
            if not needed.exists():
                raise FileNotFoundError(f"{needed}: a COCO-format folder needs it for split {split!r}")
        paths += [annotations, *(p for p in images.rglob("*") if p.is_file())]
    return [
        RemoteFile(p.relative_to(folder).as_posix(), file_digest(p, "sha256"), "sha256", ()) for p in sorted(set(paths))
    ]


SOURCES = {"coco-mini": coco_mini_files, "coco2017": coco2017_files}


def with_mirrors(urls: tuple[str, ...], mirrors: dict[str, str]) -> tuple[str, ...]:
    """Replace URL prefixes by mirrors (``data.mirrors``: original base -> mirror base)."""
    replaced = []
    for url in urls:
        for base, mirror in mirrors.items():
            if url.startswith(base):
                url = mirror + url[len(base) :]
                break
        replaced.append(url)
    return tuple(replaced)
