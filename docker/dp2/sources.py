"""Fetch, verify, unpack and patch the pinned source trees DeepPrivacy2 is built from.

Standard library only: it runs on the bare Python of an image build. The list of trees
(``requirements/dp2-sources.txt``: folder, GitHub repository, commit) is the one pin for
both routes. The archives come from a local folder (``--from``, e.g. ``../shared/sources``,
named ``<folder>-<commit[:12]>.tar.gz`` as ``git archive`` writes them) or, where there is
internet and it is asked for, from GitHub at the pinned commits (``--download``). Either
way every archive must carry its commit id (the pax header ``git archive`` and GitHub both
write), and it must be the pinned one: both routes give the same trees.

Patches for the pins' known breakages with today's packages are applied after unpacking,
each a literal replacement that must match exactly as often as stated, so an archive that
no longer fits fails loudly instead of building something else. No third-party code is
kept in this repository; only these small edits are.

Usage::

    python3 docker/dp2/sources.py LIST DEST (--from FOLDER | --download)
    python3 docker/dp2/sources.py LIST - --fingerprint FOLDER     (what a built wheel of a tree is keyed by)

Exit status 2 with one line naming the folder, the file and the problem on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

GITHUB_ARCHIVE = "https://github.com/{repository}/archive/{commit}.tar.gz"


class SourceError(RuntimeError):
    """A source folder, archive or patch does not fit the pins; the message names it."""


@dataclass(frozen=True)
class Source:
    """One pinned source tree."""

    folder: str
    repository: str
    commit: str

    @property
    def archive(self) -> str:
        """File name of its archive in a local sources folder."""
        return f"{self.folder}-{self.commit[:12]}.tar.gz"


@dataclass(frozen=True)
class Patch:
    """A literal replacement in one file of one tree, expected ``count`` times."""

    folder: str
    path: str
    old: str
    new: str
    count: int = 1
    why: str = ""


PATCHES = (
    # Pillow 10 removed Image.LINEAR, an alias of BILINEAR; upstream detectron2 made this change in ff53992b.
    Patch(
        "detectron2",
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",
        why="Image.LINEAR is gone in Pillow 10",
    ),
    # setuptools >= 82 has no pkg_resources: detectron2's model zoo finds its packaged configs with it,
    Patch(
        "detectron2",
        "detectron2/model_zoo/model_zoo.py",
        "import pkg_resources\n",
        "",
        why="pkg_resources is gone in setuptools 82",
    ),
    Patch(
        "detectron2",
        "detectron2/model_zoo/model_zoo.py",
        'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
        'os.path.join(os.path.dirname(__file__), "configs", config_path)',
        why="pkg_resources is gone in setuptools 82",
    ),
    # CLIP's setup reads its requirements with it, and its module
    # imports `packaging` through it. The environment installs CLIP's requirements itself (--no-deps).
    Patch(
        "CLIP",
        "setup.py",
        "        str(r)\n"
        "        for r in pkg_resources.parse_requirements(\n"
        '            open(os.path.join(os.path.dirname(__file__), "requirements.txt"))\n'
        "        )\n",
        "",
        why="pkg_resources is gone in setuptools 82",
    ),
    Patch("CLIP", "setup.py", "import pkg_resources\n", "", why="pkg_resources is gone in setuptools 82"),
    Patch(
        "CLIP",
        "clip/clip.py",
        "from pkg_resources import packaging",
        "import packaging.version",
        why="pkg_resources is gone in setuptools 82",
    ),
)


def fingerprint(source: Source) -> str:
    """A digest of what a tree is built from: its commit and its patches (keys a built wheel)."""
    patches = [repr(p) for p in PATCHES if p.folder == source.folder]
    return hashlib.sha256("\n".join([source.commit, *patches]).encode()).hexdigest()[:16]


def read_list(path: Path) -> list[Source]:
    """The pinned trees of a list file: ``folder repository commit`` a line, ``#`` comments."""
    sources = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or len(fields[2]) != 40:
            raise SourceError(f"{path}:{number}: expected 'folder repository commit' (40 hex digits)")
        sources.append(Source(*fields))
    return sources


def archive_commit(archive: Path) -> str | None:
    """The commit id an archive of ``git archive`` or GitHub carries (its pax header), None if none."""
    try:
        with tarfile.open(archive) as tar:
            tar.next()
            return tar.pax_headers.get("comment")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"{archive}: not a readable tar.gz archive ({exc})") from None


def download(source: Source, folder: Path) -> Path:
    """Download a tree's archive from GitHub at its pinned commit into ``folder``."""
    url = GITHUB_ARCHIVE.format(repository=source.repository, commit=source.commit)
    target = folder / source.archive
    print(f"sources.py: downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise SourceError(f"cannot download {url} ({exc}); give a folder of the archives with --from") from None
    return target


def _inside(name: str) -> bool:
    """Whether an archive member's path stays inside the archive (relative, no way up)."""
    normal = posixpath.normpath(name)
    return not normal.startswith(("/", "../")) and normal != ".."


def unpack(archive: Path, target: Path) -> None:
    """Unpack an archive's single top folder as ``target`` (refusing members that leave it)."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        tops = {Path(m.name).parts[0] for m in members if m.name not in ("", ".")}
        if len(tops) != 1:
            raise SourceError(f"{archive}: expected one top folder, found {sorted(tops)[:5]}")
        for member in members:
            if not _inside(member.name) or (
                (member.issym() or member.islnk())
                and not _inside(
                    posixpath.join(posixpath.dirname(member.name), member.linkname)
                    if member.issym()
                    else member.linkname
                )
            ):
                raise SourceError(f"{archive}: member {member.name!r} would land outside the tree")
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python < 3.11.4 has no filters: the members were checked above
                tar.extractall(tmp, members=members)
            shutil.rmtree(target, ignore_errors=True)
            (Path(tmp) / tops.pop()).rename(target)


def apply_patches(dest: Path, folders: set[str]) -> None:
    """Apply :data:`PATCHES` to the unpacked trees; one that does not match as stated is an error."""
    for patch in PATCHES:
        if patch.folder not in folders:
            continue
        path = dest / patch.folder / patch.path
        text = path.read_text(encoding="utf-8")
        found = text.count(patch.old)
        if found != patch.count:
            raise SourceError(
                f"{path}: the patch for '{patch.why}' expects {patch.count} match(es) of {patch.old.strip()!r}, "
                f"found {found}: the pinned archive changed"
            )
        path.write_text(text.replace(patch.old, patch.new), encoding="utf-8")


def fetch(sources: list[Source], dest: Path, local: Path | None) -> list[Path]:
    """Verify (and, without ``local``, download) every archive, then unpack and patch the trees into ``dest``.

    Args:
        sources: The pinned trees.
        dest: Folder that receives one sub-folder per tree (replaced if present).
        local: Folder of the archives; None downloads them from GitHub.

    Returns:
        The unpacked trees.

    Raises:
        SourceError: For a missing folder or archive, an archive of another commit, or a stale patch.
    """
    if local is not None and not local.is_dir():
        raise SourceError(f"DP2 source folder {local}: not a folder (expected the archives of the pinned commits)")
    dest.mkdir(parents=True, exist_ok=True)
    trees = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            if local is None:
                archive = download(source, Path(tmp))
            else:
                archive = local / source.archive
                if not archive.is_file():
                    raise SourceError(f"DP2 source folder {local}: {source.archive} is missing ({source.repository})")
            commit = archive_commit(archive)
            if commit != source.commit:
                raise SourceError(f"{archive}: holds commit {commit}, the pin is {source.commit} ({source.repository})")
            unpack(archive, dest / source.folder)
            trees.append(dest / source.folder)
    apply_patches(dest, {s.folder for s in sources})
    return trees


def main(argv: list[str] | None = None) -> int:
    """Command line; prints each unpacked tree, or one error line and exit status 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("list", type=Path, help="requirements/dp2-sources.txt")
    parser.add_argument("dest", type=Path, help="folder for the unpacked trees")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--from", dest="local", type=Path, help="folder holding the archives")
    where.add_argument("--download", action="store_true", help="download them from GitHub")
    where.add_argument("--fingerprint", metavar="FOLDER", help="print the digest of one tree's commit and patches")
    args = parser.parse_args(argv)
    try:
        if args.fingerprint:
            sources = {s.folder: s for s in read_list(args.list)}
            if args.fingerprint not in sources:
                raise SourceError(f"{args.list}: no tree {args.fingerprint!r}")
            print(fingerprint(sources[args.fingerprint]))
            return 0
        for tree in fetch(read_list(args.list), args.dest, args.local):
            print(tree)
    except SourceError as exc:
        print(f"sources.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
