"""The anonymize stage: a COCO split in, an anonymized variant of it out, in COCO layout.

Writes, under ``data/variants/<method>/``: ``<split>/<stem>.png`` for every
image (person-free ones with unchanged pixels), ``annotations/instances_<split>.json``
(the original annotations, file names pointing at the written files),
``masks/<split>/<stem>.png`` (the anonymized region, 0/255),
``manifest_<split>.json`` and ``coverage_<split>.json``; DP2 methods also
``paint/<split>/<stem>.png``, where DP2 was allowed to paint (128) and the person
masks it generated persons into (255), which relabel's extension proposals read. DeepPrivacy2 methods follow the
seed study's procedure: only images with a ground-truth person go to DP2, every other image is
copied byte-identical (its own file name and format), and persons DP2's own size filter drops
are counted (``persons_below_size_filter``). Each image is
written atomically and then its record under ``records/<split>/``; a rerun
with the same settings skips images that have a record, so a killed run
resumes where it stopped (changed settings start the split afresh).
The split's manifest, coverage and annotations are written once every image
has a record (by the last shard to finish). All of it is byte-identical across
reruns, worker counts and shards; wall-clock seconds live only in the records
and ``timings_<split>.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.anonymizers import container, plugins
from anonbench.anonymizers.dp2 import Dp2Anonymizer, settings_record
from anonbench.anonymizers.masks import (
    COUNT_KEYS,
    PersonMasks,
    changed_pixels,
    paint_record,
    person_masks,
    to_person,
    union,
)
from anonbench.coco import (
    AnnotationLookup,
    CocoError,
    CocoIndex,
    image_path,
    indexed,
    person_category_id,
    read_list,
)
from anonbench.config import ORIGINAL, Config, ContainerMethod, DeepPrivacy2
from anonbench.images import EXTENSIONS, UnreadableImage, encode_image, read_image
from anonbench.io import atomic_write_bytes, atomic_write_json
from anonbench.manifest import Manifest
from anonbench.names import DP2_METHODS
from anonbench.parallel import map_with_progress, take_shard

log = logging.getLogger(__name__)
PIXEL_KEYS = ("pixels", "anonymized_pixels", "gt_person_pixels", "changed_gt_person_pixels")
# Counted for DP2 methods only: persons its own size filter dropped (they keep their pixels).
DP2_COUNT_KEYS = ("persons_below_size_filter",)
Job = tuple[dict[str, Any], list[dict[str, Any]]]


class AnonymizeError(RuntimeError):
    """An image could not be anonymized under the strict policy; the message names it."""


@dataclass(frozen=True)
class Context:
    """What every per-image task of one split needs (pickled to the workers)."""

    cfg: Config
    method: str
    split: str
    person_id: int
    job: Path | None = None
    """A container method's job folder (anonbench.anonymizers.container), None for every other method."""

    @property
    def container(self) -> ContainerMethod | None:
        """The container method's definition, None for an installed or DP2 method."""
        return self.cfg.anonymize.containers.get(self.method)

    @property
    def source(self) -> Path:
        """Original image folder."""
        return self.cfg.image_dir(ORIGINAL, self.split)

    @property
    def images(self) -> Path:
        """Variant image folder."""
        return self.cfg.image_dir(self.method, self.split)

    @property
    def masks(self) -> Path:
        """Folder of anonymized-region masks."""
        return self.cfg.variant_root(self.method) / "masks" / self.split

    @property
    def paint(self) -> Path:
        """Folder of DP2's paint records (where it painted, where it put persons)."""
        return self.cfg.variant_root(self.method) / "paint" / self.split

    @property
    def records(self) -> Path:
        """Folder of per-image records: the resume state."""
        return self.cfg.variant_root(self.method) / "records" / self.split

    def record_path(self, file_name: str) -> Path:
        """Record file of one image."""
        return self.records / f"{Path(file_name).stem}.json"


def image_seed(seed: int, image_id: int) -> int:
    """Per-image seed from the global seed and the image id: independent of order, workers and shards."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:4], "little")


def uses_dp2(cfg: Config, method: str) -> bool:
    """Whether ``method`` with the configured mask source needs DeepPrivacy2 here.

    A container method always gets ground-truth masks: whatever it detects, it detects in its own image.
    """
    if method in cfg.anonymize.containers:
        return False
    return method in DP2_METHODS or cfg.anonymize.mask_source == "detector"


def needs_gpu(cfg: Config, method: str) -> bool:
    """Whether ``method`` keeps a model on a GPU in this process: DeepPrivacy2, or a plugin that says it needs one.

    Such a method runs in one worker process (one model per GPU); spread it over GPUs with shards. A
    container method's model lives in its container: the stage only reads what it wrote.
    """
    if method in cfg.anonymize.containers:
        return False
    return uses_dp2(cfg, method) or plugins.get(method).gpu


def job_folder(cfg: Config, method: str, shard: tuple[int, int] | None) -> Path:
    """The job folder of a container method's run (one per shard), inside its variant while it runs."""
    return cfg.variant_root(method) / "jobs" / (f"shard-{shard[0]}-of-{shard[1]}" if shard else "all")


@functools.cache
def _dp2(params: DeepPrivacy2, method: str, seed: int) -> Dp2Anonymizer:
    """One DP2 anonymizer per process and method (loading it takes seconds and GPU memory).

    ``method`` ``detector`` is DP2's detector alone (the classic methods' detector mask source).
    """
    return Dp2Anonymizer(params, method, seed)


class MethodFailed(RuntimeError):
    """DeepPrivacy2 raised on one image, or a container method reported it failed; the message says which."""


@dataclass(frozen=True)
class Anonymized:
    """One image's anonymization: the pixels, the region that changed, and its counts."""

    image: np.ndarray
    region: np.ndarray
    persons: int
    extra: dict[str, int]
    paint: np.ndarray | None = None
    """DP2 methods: the paint record (where DP2 painted, where it put persons); None for classic methods."""


def anonymize_pixels(ctx: Context, image: np.ndarray, masks: PersonMasks, image_id: int) -> Anonymized:
    """Anonymize one decoded image with ground-truth persons.

    An installed method (:mod:`anonbench.anonymizers.plugins`: the classic ones and any plugin's) gets
    the persons, its settings and a generator seeded with the image's seed; its region is the one it
    reports. A container method's image and region are those its finished job wrote (an image without
    a person to anonymize was not in the job and keeps its pixels). DP2's region is the set of pixels
    it changed; DP2 methods add ``persons_below_size_filter``: persons (ground truth in mode ``gt``,
    detected in mode ``detector``) that DP2's own size filter dropped and that keep their pixels, and
    the paint record: where DP2 was allowed to paint and the person masks it generated persons into.

    Raises:
        MethodFailed: When DeepPrivacy2 raises on the image, or the container method reports it failed.
    """
    params = ctx.cfg.anonymize
    seed = image_seed(ctx.cfg.seed, image_id)
    if ctx.container is not None and ctx.job is not None:
        if not masks.persons:
            return Anonymized(image, np.zeros(image.shape[:2], bool), 0, dict.fromkeys(ctx.container.counts, 0))
        out = container.read_output(ctx.job, ctx.method, ctx.container, image_id, image.shape)
        if out.image is None or out.region is None or out.counts is None:
            raise MethodFailed(out.reason)
        # Its pixels count only inside the region it says it painted: outside, the original's as decoded here.
        pixels = np.where(out.region[..., None], out.image, image)
        left_alone = out.counts.get("persons_below_size_filter", 0)  # DP2's count: persons its own filter dropped
        return Anonymized(pixels, out.region, len(masks.persons) - left_alone, out.counts)
    if ctx.method not in DP2_METHODS:
        persons = masks.persons
        if params.mask_source == "detector":
            detected = _dp2(params.dp2, "detector", ctx.cfg.seed).detect(image)
            persons = [to_person(m, params.dilation_px) for m in detected if m.any()]
        method = plugins.get(ctx.method)
        painted = method(image, persons, params.settings(ctx.method), np.random.default_rng(seed))
        return Anonymized(painted.image, painted.region, len(persons), dict(painted.counts))
    gt = [union([p], image.shape) for p in masks.persons] if params.dp2.mode == "gt" else None
    anonymizer = _dp2(params.dp2, ctx.method, ctx.cfg.seed)
    try:
        result = anonymizer(image, gt, seed)
    except Exception as exc:  # third-party code: whatever it raises on one image is that image's failure
        raise MethodFailed(f"DeepPrivacy2 raised {type(exc).__name__}: {exc}") from exc
    below = {"persons_below_size_filter": result.below_size_filter}
    paint = paint_record(result.painted, result.persons)
    return Anonymized(result.image, changed_pixels(image, result.image), result.anonymized, below, paint)


def _skip_reason(counts: dict[str, int], min_person_px: int) -> str:
    """Why an image with persons in the ground truth has none anonymized."""
    reasons = [f"{counts['persons_small']} under {min_person_px} px"] if counts["persons_small"] else []
    reasons += [f"{counts['persons_empty']} with neither mask nor box"] if counts["persons_empty"] else []
    below = counts.get("persons_below_size_filter", 0)
    reasons += [f"{below} under DeepPrivacy2's size filter"] if below else []
    return (
        f"{counts['persons_gt']} person(s) in ground truth, none anonymized ({', '.join(reasons) or 'none detected'})"
    )


def _person_masks(ctx: Context, annotations: list[dict[str, Any]], height: int, width: int) -> PersonMasks:
    """Ground-truth persons: dilated and size-filtered for the classic methods, as annotated for DP2.

    DP2 dilates each mask itself and applies its own size filter (the study's), so it gets them bare.
    """
    return person_masks(annotations, ctx.person_id, height, width, *_mask_settings(ctx.cfg, ctx.method))


def _mask_settings(cfg: Config, method: str) -> tuple[int, int]:
    """Dilation and size filter of the method's person masks: none for DP2, a container method's own if it sets them."""
    params, own = cfg.anonymize, cfg.anonymize.containers.get(method)
    if method in DP2_METHODS:
        return 0, 0
    dilation = params.dilation_px if own is None or own.dilation_px is None else own.dilation_px
    smallest = params.min_person_px if own is None or own.min_person_px is None else own.min_person_px
    return dilation, smallest


def _details(masks: PersonMasks, counts: dict[str, Any], changed: np.ndarray, region: np.ndarray) -> dict[str, Any]:
    """A record's details: counts, pixel sums and coverage (DP2 methods also say whether it was copied)."""
    height, width = masks.gt.shape
    gt_pixels = int(np.count_nonzero(masks.gt))
    changed_gt = int(np.count_nonzero(changed & masks.gt)) if gt_pixels else 0
    anonymized_pixels = int(np.count_nonzero(region))
    return {
        **counts,
        "pixels": height * width,
        "anonymized_pixels": anonymized_pixels,
        "gt_person_pixels": gt_pixels,
        "changed_gt_person_pixels": changed_gt,
        "full_image": anonymized_pixels == height * width,
        "anonymized_fraction": round(anonymized_pixels / (height * width), 6),
        "coverage": round(changed_gt / gt_pixels, 6) if gt_pixels else None,
    }


def _copy(ctx: Context, name: str, masks: PersonMasks, height: int, width: int) -> dict[str, Any]:
    """Copy an image without persons byte-identical (DP2 methods: it never reaches DP2); its record's details."""
    atomic_write_bytes(ctx.images / Path(name).name, image_path(ctx.source, name).read_bytes())
    nothing = np.zeros((height, width), dtype=bool)
    counts = {**masks.counts, "persons_below_size_filter": 0, "copied": True}
    return _details(masks, counts, nothing, nothing)


def _anonymize_record(
    ctx: Context, info: dict[str, Any], name: str, image: np.ndarray, masks: PersonMasks
) -> dict[str, Any]:
    """Anonymize one decoded image, write it and its region mask; its record.

    Raises:
        MethodFailed: When DeepPrivacy2 raises on the image or a container method failed on it (nothing is
            written for it).
    """
    params = ctx.cfg.anonymize
    done = anonymize_pixels(ctx, image, masks, info["id"])
    stem = Path(name).stem
    fmt = params.output_format
    atomic_write_bytes(ctx.images / f"{stem}{EXTENSIONS[fmt]}", encode_image(done.image, fmt, params.jpeg_quality))
    if done.region.any():
        atomic_write_bytes(ctx.masks / f"{stem}.png", encode_image(done.region.astype(np.uint8) * 255, bilevel=True))
    if done.paint is not None and done.paint.any():
        atomic_write_bytes(ctx.paint / f"{stem}.png", encode_image(done.paint))
    counts = {**masks.counts, "persons_anonymized": done.persons, **done.extra}
    if ctx.method in DP2_METHODS:
        counts["copied"] = False
    details = _details(masks, counts, changed_pixels(image, done.image), done.region)
    skipped = counts["persons_gt"] > 0 and done.persons == 0
    reason = _skip_reason(counts, params.min_person_px) if skipped else ""
    return {"key": name, "status": "skipped" if skipped else "ok", "reason": reason, "details": details}


def process_image(ctx: Context, job: Job) -> dict[str, Any]:
    """Anonymize, write and record one image (a top-level function, so workers can run it).

    Raises:
        AnonymizeError: Under the strict policy, for an image that is missing,
            undecodable, outside its folder, or not the size its record says, or
            on which DeepPrivacy2 raises or a container method failed.
    """
    info, annotations = job
    start = time.perf_counter()
    name, height, width = info["file_name"], info["height"], info["width"]
    try:
        image = read_image(image_path(ctx.source, name))
        if image.shape[:2] != (height, width):
            raise UnreadableImage(
                f"{name}: decoded {image.shape[1]}x{image.shape[0]}, annotations say {width}x{height}"
            )
    except (UnreadableImage, CocoError) as exc:
        if ctx.cfg.policy == "strict":
            raise AnonymizeError(f"image id {info['id']}: {exc} (policy=skip records it and goes on)") from None
        record: dict[str, Any] = {"key": name, "status": "error", "reason": str(exc), "details": {}}
    else:
        masks = _person_masks(ctx, annotations, height, width)
        if ctx.method in DP2_METHODS and masks.counts["persons_gt"] == 0:
            record = {"key": name, "status": "ok", "reason": "", "details": _copy(ctx, name, masks, height, width)}
        else:
            try:
                record = _anonymize_record(ctx, info, name, image, masks)
            except MethodFailed as exc:
                if ctx.cfg.policy == "strict":
                    raise AnonymizeError(
                        f"image id {info['id']} ({name}): {exc} (policy=skip records it and goes on)"
                    ) from exc
                record = {"key": name, "status": "error", "reason": f"{name}: {exc}", "details": {}}
    record["seconds"] = round(time.perf_counter() - start, 4)
    atomic_write_json(ctx.record_path(name), record)
    return record


def method_counts(cfg: Config, method: str) -> tuple[str, ...]:
    """The counts ``method`` adds to each image's record: DP2's, or those an installed method declares.

    Raises:
        PluginError: When a declared count takes the name of one the stage counts itself.
    """
    if method in DP2_METHODS:
        return DP2_COUNT_KEYS
    if definition := cfg.anonymize.containers.get(method):
        # A container serving DeepPrivacy2 (anonbench run-job) reports DP2's own count under its name.
        declared, own = tuple(definition.counts), {*COUNT_KEYS, *PIXEL_KEYS}
    else:
        declared, own = plugins.get(method).counts, {*COUNT_KEYS, *DP2_COUNT_KEYS, *PIXEL_KEYS}
    if taken := sorted(set(declared) & own):
        raise plugins.PluginError(f"anonymizer {method!r}: counts {taken} are anonbench's own; name yours otherwise")
    return declared


def coverage_summary(cfg: Config, method: str, split: str, manifest: Manifest) -> dict[str, Any]:
    """Aggregate privacy measure of a split: how many persons and person pixels were anonymized.

    ``coverage`` is pixel-weighted (changed ground-truth person pixels over all
    of them); ``coverage_mean_image`` and ``coverage_min_image`` are over images
    with a person. An installed method's own counts (``Anonymizer.counts``) are summed too.
    """
    details = [r.details for r in manifest.records if r.status != "error"]
    keys = (*COUNT_KEYS, *method_counts(cfg, method), *PIXEL_KEYS)
    totals = {key: sum(d[key] for d in details) for key in keys}
    per_image = [d["coverage"] for d in details if d["coverage"] is not None]
    gt_pixels = totals["gt_person_pixels"]
    return {
        "method": method,
        "split": split,
        "images": len(manifest.records),
        "status": manifest.counts,
        "images_with_person": sum(d["persons_gt"] > 0 for d in details),
        "full_image_masks": sum(d["full_image"] for d in details),
        **totals,
        "coverage": round(totals["changed_gt_person_pixels"] / gt_pixels, 6) if gt_pixels else None,
        "coverage_mean_image": round(float(np.mean(per_image)), 6) if per_image else None,
        "coverage_min_image": min(per_image, default=None),
    }


def _assemble(ctx: Context, index: CocoIndex, records: list[dict[str, Any]]) -> tuple[list[Path], dict[str, Any]]:
    """Write the split's manifest, coverage summary, timings and variant annotations from the records."""
    root = ctx.cfg.variant_root(ctx.method)
    manifest = Manifest("anonymize", ctx.split)
    for record in records:
        manifest.add(record["key"], record["status"], record["reason"], **record["details"])
    summary = coverage_summary(ctx.cfg, ctx.method, ctx.split, manifest)
    if ctx.method in DP2_METHODS:
        summary["dp2"] = settings_record(ctx.cfg.anonymize.dp2, ctx.method)
        if summary["persons_below_size_filter"]:
            log.warning(
                "%s %s: %d person(s) under DeepPrivacy2's size filter kept their pixels "
                "(persons_below_size_filter in %s)",
                ctx.method,
                ctx.split,
                summary["persons_below_size_filter"],
                root / f"manifest_{ctx.split}.json",
            )
    failed = {r["key"] for r in records if r["status"] == "error"}
    failed_ids = {im["id"] for im in index.images if im["file_name"] in failed}
    ext = EXTENSIONS[ctx.cfg.anonymize.output_format]
    copied = {r["key"] for r in records if r["details"].get("copied")}
    images = (
        {
            **im,
            "file_name": Path(im["file_name"]).name
            if im["file_name"] in copied
            else f"{Path(im['file_name']).stem}{ext}",
        }
        for im in index.images
        if im["id"] not in failed_ids
    )
    seconds = {r["key"]: r["seconds"] for r in records}
    paths = [
        manifest.write(root / f"manifest_{ctx.split}.json"),
        atomic_write_json(root / f"coverage_{ctx.split}.json", summary),
        index.write(ctx.cfg.annotation_file(ctx.method, ctx.split), images, {image_id: [] for image_id in failed_ids}),
        atomic_write_json(
            root / f"timings_{ctx.split}.json", {"seconds_total": round(sum(seconds.values()), 3), "seconds": seconds}
        ),
    ]
    # A killed run can leave the temporary files of its atomic writes behind.
    for folder in (ctx.images, ctx.masks, ctx.paint, ctx.records, root / "annotations", root):
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
    return paths, summary


def _start_fresh_if_settings_changed(ctx: Context) -> None:
    """Records only say an image is done; after a change of settings they would say so wrongly.

    The settings a split was made with are kept beside its records; when they
    differ (or the split predates them) every output of the split is removed
    before work starts, so no image, mask or record of the old settings survives.
    """
    if _same_settings(ctx):
        return
    root = ctx.cfg.variant_root(ctx.method)
    if ctx.records.exists() or ctx.images.exists():
        log.warning("%s %s: settings changed, starting the split afresh", ctx.method, ctx.split)
    for folder in (ctx.images, ctx.masks, ctx.paint, ctx.records):
        shutil.rmtree(folder, ignore_errors=True)
    for name in (f"manifest_{ctx.split}.json", f"coverage_{ctx.split}.json", f"timings_{ctx.split}.json"):
        (root / name).unlink(missing_ok=True)
    ctx.cfg.annotation_file(ctx.method, ctx.split).unlink(missing_ok=True)
    atomic_write_json(_settings_stamp(ctx), _settings(ctx))


def _settings(ctx: Context) -> dict[str, Any]:
    """The settings a split's images are made with (of the container methods, only this method's own)."""
    anonymize = ctx.cfg.anonymize.model_dump(mode="json", exclude={"containers"})
    own = {"container": ctx.container.model_dump(mode="json")} if ctx.container is not None else {}
    return {"method": ctx.method, "seed": ctx.cfg.seed, "anonymize": anonymize, **own}


def _settings_stamp(ctx: Context) -> Path:
    """Where the settings of a split's records are kept, beside the records."""
    return ctx.records.parent / f"settings_{ctx.split}.json"


def _same_settings(ctx: Context) -> bool:
    """Whether the split's records were made with the current settings."""
    stamp = _settings_stamp(ctx)
    return stamp.exists() and json.loads(stamp.read_text()) == _settings(ctx)


def _done(ctx: Context, file_name: str) -> bool:
    """An image with a record is done, except one that failed: it is tried again (a repaired file, a strict rerun)."""
    path = ctx.record_path(file_name)
    return path.exists() and json.loads(path.read_text())["status"] != "error"


def split_pending(cfg: Config, method: str, split: str, shard: tuple[int, int] | None) -> bool:
    """Whether :func:`anonymize_split` has work to do.

    Work is changed settings, images of the shard without a done record, or a split whose images are
    all done but whose coverage is not assembled yet.
    """
    annotation_file = cfg.annotation_file(ORIGINAL, split)
    ctx = Context(cfg, method, split, person_category_id(read_list(annotation_file, "categories")))
    images = read_list(annotation_file, "images")
    mine = take_shard(sorted(images, key=lambda im: im["id"]), shard) if shard else images
    if not _same_settings(ctx) or not all(_done(ctx, im["file_name"]) for im in mine):
        return True
    assembled = (cfg.variant_root(method) / f"coverage_{split}.json").is_file()
    return not assembled and all(ctx.record_path(im["file_name"]).exists() for im in images)


def anonymize_split(
    cfg: Config, method: str, split: str, shard: tuple[int, int] | None, workers: int
) -> tuple[list[Path], dict[str, Any] | None]:
    """Anonymize the images of one split (or shard) that have no record yet.

    Returns:
        The paths written and the coverage summary, which is None while other
        shards still have images to do.
    """
    with indexed(cfg.annotation_file(ORIGINAL, split)) as index:
        job = job_folder(cfg, method, shard) if method in cfg.anonymize.containers else None
        ctx = Context(cfg, method, split, person_category_id(index.categories), job)
        _start_fresh_if_settings_changed(ctx)
        images = sorted(index.images, key=lambda im: im["id"])
        mine = take_shard(images, shard) if shard else images
        todo = _todo(ctx, mine)
        log.info("%s %s: %d of %d images to do", method, split, len(todo), len(mine))
        task = functools.partial(_process_indexed, ctx, index.lookup)
        for _ in map_with_progress(task, todo, workers, f"anonymize {method} {split}"):
            pass
        folders = [ctx.images, ctx.masks, *([ctx.paint] if method in DP2_METHODS else [])]
        missing = [im["file_name"] for im in images if not ctx.record_path(im["file_name"]).exists()]
        if missing:
            log.info(
                "%s %s: %d images left to other shards; the manifest follows with the last", method, split, len(missing)
            )
            return folders, None
        records = [json.loads(ctx.record_path(im["file_name"]).read_text()) for im in images]
        paths, summary = _assemble(ctx, index, records)
    return folders + paths, summary


def _todo(ctx: Context, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The images without a done record."""
    return [im for im in images if not _done(ctx, im["file_name"])]


def container_job(
    cfg: Config, method: str, splits: list[str], shard: tuple[int, int] | None, always: bool = False
) -> Path | None:
    """Write a container method's job for the images of ``splits`` (or the shard) that are still to do.

    The images it holds are those without a done record that have a person to anonymize; changed
    settings clear a split's records first, as for every method.

    Args:
        cfg: Validated configuration.
        method: A container method's name (``anonymize.containers``).
        splits: Splits whose images the job holds.
        shard: ``(i, n)``: only that shard's images.
        always: Write the job even when it holds no image (the KFP task that runs it next needs a job).

    Returns:
        The job folder when the job has to run, None when there is nothing to do or this request's
        outputs are already there (a finished job, or another task ran it).
    """
    definition = cfg.anonymize.containers[method]
    job = job_folder(cfg, method, shard)
    images: list[container.JobImage] = []
    for split in splits:
        with indexed(cfg.annotation_file(ORIGINAL, split)) as index:
            ctx = Context(cfg, method, split, person_category_id(index.categories), job)
            _start_fresh_if_settings_changed(ctx)
            mine = sorted(index.images, key=lambda im: im["id"])
            for info in _todo(ctx, take_shard(mine, shard) if shard else mine):
                masks = _person_masks(ctx, index.lookup.of(info["id"]), info["height"], info["width"])
                if masks.persons:
                    path = image_path(ctx.source, info["file_name"]).resolve()
                    images.append(
                        container.JobImage(
                            info["id"], split, info["file_name"], path, info["height"], info["width"],
                            image_seed(cfg.seed, info["id"]), masks.persons,
                        )
                    )  # fmt: skip
    if not images and not always:
        return None
    return job if container.prepare(job, method, definition, cfg.seed, _mask_settings(cfg, method)[0], images) else None


def _run_container(cfg: Config, method: str, job: Path) -> None:
    """Run a prepared container job with Docker, the original image folders mounted read-only."""
    folders = {Path(entry["path"]).parent for entry in json.loads((job / "request.json").read_text())["images"]}
    log.info("%s: running %s on %s", method, cfg.anonymize.containers[method].image, job)
    container.run_docker(job, cfg.anonymize.containers[method], sorted(folders))


def _process_indexed(ctx: Context, lookup: AnnotationLookup, info: dict[str, Any]) -> dict[str, Any]:
    """Worker task: the image's annotations from the split's index, then :func:`process_image`."""
    return process_image(ctx, (info, lookup.of(info["id"])))


def _run_tags(cfg: Config, method: str) -> dict[str, str]:
    """The anonymize run's tags: the method and how it was made.

    DeepPrivacy2: its mode and whether it is untrained; an installed method: the package that provides it,
    whether it is deterministic and whether it needs a GPU.
    """
    tags = {"method": method}
    if definition := cfg.anonymize.containers.get(method):
        tags |= {
            "method_package": "container",
            "method_image": definition.image,
            "method_deterministic": str(definition.deterministic).lower(),
            "method_gpu": str(definition.gpu).lower(),
        }
    elif method in DP2_METHODS:
        tags |= {"dp2_mode": cfg.anonymize.dp2.mode, "dp2_untrained": str(cfg.anonymize.dp2.untrained).lower()}
    else:
        anonymizer = plugins.get(method)
        tags |= {
            "method_package": plugins.package(method),
            "method_deterministic": str(anonymizer.deterministic).lower(),
            "method_gpu": str(anonymizer.gpu).lower(),
        }
    return tags


def _log_to_mlflow(cfg: Config, method: str, summaries: dict[str, dict[str, Any]], paths: list[Path]) -> None:
    """Into the active anonymize run: the anonymization settings and each split's coverage."""
    import mlflow

    params = cfg.anonymize
    settings = params.containers.get(method) or (params.dp2 if method in DP2_METHODS else params.settings(method))
    mlflow.log_params(
        {
            "method": method,
            "mask_source": f"dp2 {params.dp2.mode}" if method in DP2_METHODS else params.mask_source,
            "dilation_px": params.dilation_px,
            "min_person_px": params.min_person_px,
            "output_format": params.output_format,
            "settings": settings.model_dump_json(),
        }
    )
    for split, summary in summaries.items():
        numbers = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        mlflow.log_metrics({f"{split}/{key}": float(value) for key, value in numbers.items()})
    for path in paths:
        if path.name.startswith(("coverage_", "manifest_")):
            mlflow.log_artifact(str(path))


def run(
    cfg: Config,
    method: str,
    splits: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    prepare_only: bool = False,
) -> list[Path]:
    """Anonymize the persons of each split with ``method`` into ``data/variants/<method>/``.

    Args:
        cfg: Validated configuration (``anonymize`` section, ``seed``, ``policy``, ``workers``).
        method: An installed method (blur, pixelate, mask or a plugin's; :mod:`anonbench.anonymizers.plugins`),
            dp2_fullbody or dp2_face.
        splits: Splits to do (default: train and val).
        shard: ``(i, n)``: only every n-th image from the i-th, for spreading over pods or GPUs.
        prepare_only: A container method: write its job and stop (the KFP pipeline runs the job as a
            task of its own, then this stage again to read it).

    Returns:
        The folders and files written.

    Raises:
        ValueError: For an unknown method (UnknownMethod: one line listing the installed ones), a method whose
            declared counts take the stage's own names (PluginError), dp2_face
            with ground-truth masks (COCO has no faces), or missing DP2 weights (dp2_weights.WeightsError,
            naming each file).
        Dp2Unavailable: At once, when the method needs DeepPrivacy2 and it is not installed, or CUDA
            is asked for and absent.
    """
    method_counts(cfg, method)  # an unknown name stops here, listing the installed methods; so does a bad count name
    splits = splits or list(cfg.data.splits)
    if prepare_only:
        if method not in cfg.anonymize.containers:
            raise ValueError(f"--prepare-job: {method!r} is not a container method (anonymize.containers)")
        container_job(cfg, method, splits, shard, always=True)
        return [job_folder(cfg, method, shard)]
    if not any(split_pending(cfg, method, split, shard) for split in splits):
        _remove_job(cfg, method, shard)
        return [p for split in splits for p in anonymize_split(cfg, method, split, shard, 1)[0]]
    from anonbench.tracking import mlflow_run

    name = f"anonymize-{method}" + (f" shard {shard[0]}/{shard[1]}" if shard else "")
    with mlflow_run(cfg, name, "anonymize", _run_tags(cfg, method), reads=[cfg.source_root]):
        if uses_dp2(cfg, method):  # load DP2 before any work: a missing weight, CUDA or DP2 stops here
            _dp2(cfg.anonymize.dp2, method if method in DP2_METHODS else "detector", cfg.seed)
        if method in cfg.anonymize.containers and (job := container_job(cfg, method, splits, shard)):
            _run_container(cfg, method, job)
        # DP2 (or a plugin needing a GPU) keeps a model on the GPU per process: one process per GPU, shards across GPUs.
        workers = 1 if needs_gpu(cfg, method) else cfg.n_workers
        written: list[Path] = []
        summaries: dict[str, dict[str, Any]] = {}
        for split in splits:
            paths, summary = anonymize_split(cfg, method, split, shard, workers)
            written += paths
            if summary is not None:
                summaries[split] = summary
        _log_to_mlflow(cfg, method, summaries, written)
    _remove_job(cfg, method, shard)
    return written


def _remove_job(cfg: Config, method: str, shard: tuple[int, int] | None) -> None:
    """A container method's job, once read: its records hold what it wrote (no-op for other methods)."""
    if method not in cfg.anonymize.containers:
        return
    job = job_folder(cfg, method, shard)
    shutil.rmtree(job, ignore_errors=True)
    if job.parent.is_dir() and not any(job.parent.iterdir()):  # other shards' jobs may still be there
        job.parent.rmdir()
