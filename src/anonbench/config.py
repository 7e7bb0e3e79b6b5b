"""Typed parameters: ``params.yaml`` plus a profile diff plus ``--set`` overrides.

``params.yaml`` is the single source of every stage's settings. Its top level is
the ``mini`` profile; ``profiles.<name>`` holds small diffs merged on top (the
Hydra habit of experiments as config diffs). The merged mapping is validated
by the pydantic models below before any stage does work, so a typo or an
impossible value fails at once with one line that names the key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from anonbench.coco_classes import COCO_NAMES
from anonbench.families import DEFAULT_FAMILY, FAMILIES, Family
from anonbench.names import ORIGINAL, ConfigError

# Model ids: "<variant>-<size>" for trained YOLOv10s, "<variant>-<family>-<size>" for the other detector
# families, "ft-<freeze config>" for the (YOLOv10) fine-tunes.
FINETUNE_PREFIX = "ft-"
CLASSIC_METHODS = ("blur", "pixelate", "mask")
ModelSize = Literal["n", "s", "m", "l", "x"]
# YOLOv10 layer indices are the same for every size: 0-9 backbone, 10 PSA, 11-22 neck, 23 head.
YOLOV10_LAST_LAYER = 23
# Data sources: the two COCO releases with committed checksums, and a user's own COCO-format folder.
DataSource = Literal["coco-mini", "coco2017", "coco-folder"]
COCO_SOURCES = ("coco-mini", "coco2017")
# Environment variables that point at an existing local copy of a data source.
LOCAL_COPY_ENV = {
    "coco-mini": "ANONBENCH_COCO_MINI",
    "coco2017": "ANONBENCH_COCO2017",
    "coco-folder": "ANONBENCH_COCO_FOLDER",
}
# Environment variable naming the folder of DeepPrivacy2's checkpoints (the DP2 image sets it).
DP2_WEIGHTS_ENV = "ANONBENCH_DP2_WEIGHTS"

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ClassList = Annotated[list[str], Field(min_length=1)]


class Paths(_Section):
    """Where stages write; every folder is a DVC output, never committed to git."""

    data: Path = Path("data")
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    reports: Path = Path("reports")


class Data(_Section):
    """Which COCO-format source to use and where a local copy of it lives.

    ``coco-folder`` is any COCO-format folder (``<split>/`` image folders and
    ``annotations/instances_<split>.json``) with its own category table; it has
    no published checksums and cannot be downloaded, so ``local_copy`` (or
    ``ANONBENCH_COCO_FOLDER``) must name it.
    """

    source: DataSource = "coco-mini"
    local_copy: Path | None = None
    mirrors: dict[str, str] = Field(default_factory=dict)
    train_split: str = "train2017"
    val_split: str = "val2017"
    deep_check: bool = False

    @property
    def splits(self) -> tuple[str, str]:
        """Train and validation split names, in that order."""
        return (self.train_split, self.val_split)


class FrequencyBorders(_Section):
    """A class is `high` with at least `high` images that also show a person, `medium` from `medium`, else `low`."""

    high: PositiveInt = 3200
    medium: PositiveInt = 1400

    @model_validator(mode="after")
    def _ordered(self) -> FrequencyBorders:
        if self.high <= self.medium:
            raise ValueError("high must be above medium")
        return self


class Prepare(_Section):
    """Statistics settings of the prepare stage."""

    frequency_borders: FrequencyBorders = FrequencyBorders()


class Classes(_Section):
    """Class groups of the study (DESIGN.md tables); data, not code.

    Names are category names of the dataset. For the COCO sources they must be
    COCO names (checked here, so a typo fails at once); a ``coco-folder``
    dataset's table is only known once its annotations are read, so there a
    name the table lacks is a recorded absence in the stages that use the lists
    (docs/data.md), not an error.
    """

    size_frequency: dict[Literal["small", "medium", "large"], dict[Literal["low", "medium", "high"], ClassList]]
    use_case_groups: dict[str, ClassList]
    comparison: ClassList

    @property
    def size_frequency_classes(self) -> list[str]:
        """Every class of the size x frequency grid, row by row."""
        return [n for row in self.size_frequency.values() for names in row.values() for n in names]

    def lists(self) -> dict[str, list[str]]:
        """Every class list by its dotted key, e.g. ``classes.size_frequency.small.low``."""
        lists = {
            f"classes.size_frequency.{size}.{freq}": names
            for size, row in self.size_frequency.items()
            for freq, names in row.items()
        }
        lists |= {f"classes.use_case_groups.{group}": names for group, names in self.use_case_groups.items()}
        return lists | {"classes.comparison": self.comparison}


class DeepPrivacy2(_Section):
    """DeepPrivacy2 (DP2) settings; it runs in the DP2 environment (``make dp2-env``) or image (docker/dp2).

    ``mode`` names what a run reproduces: ``detector`` is the seed study (DP2's ``FB_cse.py``,
    Mask R-CNN + CSE DensePose detections, all defaults); ``gt`` fills the ground-truth person
    masks with DP2's generator without CSE embeddings (comparable to neither that study nor DP2's
    own COCO script). ``untrained`` builds DP2's real generators from their configs with random
    weights (noise in the persons' place): a smoke switch for tests and a cluster's plumbing,
    refused where ``allow_untrained`` is false (the paper profile). ``weights_dir`` holds the
    checkpoints laid out by ``anonbench dp2-weights`` (default: env ANONBENCH_DP2_WEIGHTS, else
    ~/.cache/anonbench/dp2-weights); ``repo_dir`` a DP2 source tree (default: the one installed).
    """

    mode: Literal["detector", "gt"] = "detector"
    untrained: bool = False
    allow_untrained: bool = True
    device: Literal["cpu", "cuda"] = "cpu"
    amp: bool = False
    truncation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    weights_dir: Path | None = None
    repo_dir: Path | None = None

    @model_validator(mode="after")
    def _untrained_allowed(self) -> DeepPrivacy2:
        if self.untrained and not self.allow_untrained:
            raise ValueError(
                "untrained: refused here (allow_untrained is false, as in the paper profile): an untrained "
                "DP2 paints noise, not a study variant; set anonymize.dp2.allow_untrained=true to check plumbing"
            )
        return self

    @property
    def weights(self) -> Path:
        """DP2's checkpoints, absolute: ``weights_dir``, else env ANONBENCH_DP2_WEIGHTS, else the user cache."""
        env = os.environ.get(DP2_WEIGHTS_ENV)
        folder = self.weights_dir or (Path(env) if env else Path.home() / ".cache" / "anonbench" / "dp2-weights")
        return folder.expanduser().absolute()  # DP2 loads from its own tree as working directory


class SectionError(ValueError):
    """A bad value inside a section validated by its own schema; ``key`` is its dotted place there."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


class ContainerMethod(_Section):
    """A method that runs in its own image through the file contract (anonbench.anonymizers.container).

    The command gets the job folder as its last argument: ``request.json`` and one mask file per image
    in, one image and region per image and ``output/manifest.json`` out (docs/plugins.md, "Container
    methods"). The local anonymize stage runs it with Docker; the KFP pipeline as a task of its own.
    """

    image: Annotated[str, Field(min_length=1)]
    command: Annotated[list[str], Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)
    """Handed to the command as ``request.json``'s ``params``; the method validates them itself."""
    gpu: bool = False
    deterministic: bool = True
    summary: str = ""
    counts: list[str] = Field(default_factory=list)
    """Per-image counts the method reports in its manifest, summed into the split's coverage."""
    dilation_px: Annotated[int, Field(ge=0)] | None = None
    """Mask dilation for this method (None: ``anonymize.dilation_px``; 0 hands DP2 the masks as annotated)."""
    min_person_px: Annotated[int, Field(ge=0)] | None = None
    """Size filter for this method (None: ``anonymize.min_person_px``; 0 keeps every person)."""


class Anonymize(_Section):
    """Which variants to make and how; classic methods use ground-truth masks.

    Each installed method (anonbench.anonymizers.plugins: the classic ones and any plugin package's) has
    its parameters under its own name (``anonymize.blur``, ``anonymize.<plugin>``), validated by the schema
    it declares; a method named in ``methods`` without a section gets its defaults. Those sections are
    the model's extra fields: :meth:`settings` reads them.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    containers: dict[str, ContainerMethod] = Field(default_factory=dict)
    """Container methods by name; one named in ``methods`` joins the study like an installed one."""
    methods: Annotated[list[str], Field(min_length=1)] = list(CLASSIC_METHODS)
    mask_source: Literal["gt", "detector"] = "gt"
    dilation_px: Annotated[int, Field(ge=0)] = 3
    min_person_px: Annotated[int, Field(ge=0)] = 8
    output_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 95
    dp2: DeepPrivacy2 = DeepPrivacy2()

    @field_validator("containers")
    @classmethod
    def _free_names(cls, containers: dict[str, ContainerMethod]) -> dict[str, ContainerMethod]:
        from anonbench.anonymizers import plugins

        for name in containers:
            if name in plugins.names() or name in plugins.RESERVED:
                raise ValueError(f"{name!r} is an installed method or reserved; name the container method otherwise")
        return containers

    @field_validator("methods")
    @classmethod
    def _installed(cls, methods: list[str], info: ValidationInfo) -> list[str]:
        from anonbench.anonymizers import plugins

        containers = info.data.get("containers", {})
        for name in methods:
            if name not in plugins.names() and name not in containers:
                raise ValueError(plugins.unknown(name, containers))
        if doubled := sorted({m for m in methods if methods.count(m) > 1}):
            raise ValueError(f"{doubled} named twice")
        return methods

    @model_validator(mode="before")
    @classmethod
    def _method_settings(cls, data: Any) -> Any:
        """Validate each method's own section by its schema; give a named method without one its defaults."""
        from anonbench.anonymizers import plugins

        if not isinstance(data, dict):
            return data
        installed = plugins.installed()
        named = [m for m in data.get("methods", CLASSIC_METHODS) if isinstance(m, str) and m in installed]
        sections = [key for key in data if key not in cls.model_fields]
        settled = dict(data)
        for key in dict.fromkeys([*sections, *named]):
            if key not in installed:
                raise SectionError(key, "unknown key (not a setting, nor an installed anonymization method)")
            try:
                settled[key] = installed[key].settings(data.get(key))
            except ValidationError as err:
                first = err.errors()[0]
                inner = ".".join(str(p) for p in first["loc"])
                message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
                shown = "" if first["type"] in ("extra_forbidden", "missing") else f" (got {first.get('input')!r})"
                raise SectionError(f"{key}.{inner}", message.removeprefix("Value error, ") + shown) from None
        return settled

    def settings(self, method: str) -> BaseModel:
        """The validated parameters of installed method ``method``: its section, else its defaults.

        Raises:
            UnknownMethod: For a name no installed package provides (anonbench.anonymizers.plugins).
        """
        from anonbench.anonymizers import plugins

        section = (self.model_extra or {}).get(method)
        return section if isinstance(section, BaseModel) else plugins.get(method).settings(None)


class Ssim(_Section):
    """SSIM of each variant against the original, skimage semantics."""

    win_size: Annotated[int, Field(ge=3)] = 7

    @field_validator("win_size")
    @classmethod
    def _odd(cls, win: int) -> int:
        if win % 2 == 0:
            raise ValueError("win_size must be odd")
        return win


class HsvBins(_Section):
    """Bins per HSV channel of the appearance descriptor (a joint histogram of hue x saturation x value)."""

    hue: Annotated[int, Field(ge=1, le=180)] = 16
    saturation: Annotated[int, Field(ge=1, le=256)] = 4
    value: Annotated[int, Field(ge=1, le=256)] = 4


class Privacy(_Section):
    """The privacy audit (anonbench privacy, docs/privacy.md): face detector, matching rules, attacks."""

    split: Literal["val", "train"] = "val"
    detector: Literal["hog", "cnn"] = "hog"
    upsample: Annotated[int, Field(ge=0, le=4)] = 2
    match_iou: Fraction = 0.5
    in_region: Fraction = 0.5
    inversion_iterations: PositiveInt = 30
    appearance_bins: HsvBins = HsvBins()


class Export(_Section):
    """COCO to YOLO layout; images are linked, not copied."""

    link: Literal["symlink", "hardlink", "copy"] = "symlink"


class Train(_Section):
    """Detectors from scratch (yaml, no weights); any other Ultralytics argument goes in `extra`.

    The models trained are ``variants`` x ``families`` x ``sizes``: each family at the sizes of
    ``sizes`` that Ultralytics has a yaml for (RT-DETR: l and x), except that ``sizes_by_variant`` narrows the
    sizes of the variants it names to those of its list that ``sizes`` has (the paper trained
    its classic methods at m only). An entry for a variant not trained narrows nothing: an
    override of ``variants`` or ``sizes`` on a narrowed profile stays valid, since ``--set``
    cannot remove a key. dvc.yaml runs the top level's variants x sizes as a matrix, so only a
    profile narrows (the KFP pipeline and the cost model read the resolved grid).
    """

    sizes: Annotated[list[ModelSize], Field(min_length=1)] = ["n"]
    families: Annotated[list[Family], Field(min_length=1)] = [DEFAULT_FAMILY]
    variants: Annotated[list[str], Field(min_length=1)] = [ORIGINAL, *CLASSIC_METHODS]
    sizes_by_variant: dict[str, Annotated[list[ModelSize], Field(min_length=1)]] = Field(default_factory=dict)
    epochs: PositiveInt = 100
    imgsz: PositiveInt = 640
    batch: PositiveInt = 40
    optimizer: str = "SGD"
    deterministic: bool = True
    device: str = "cpu"
    amp: bool = True
    workers: Annotated[int, Field(ge=0)] = 8
    val: bool = True
    checkpoint: Literal["last", "best"] = "last"
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _checkpoint_needs_validation(self) -> Train:
        if self.checkpoint == "best" and not self.val:
            raise ValueError("checkpoint: 'best' is chosen by validation fitness, so it needs val: true")
        owned = sorted(set(self.extra) & {"val", "epochs", "imgsz", "batch", "optimizer", "seed", "data", "device"})
        if owned:
            raise ValueError(f"extra: {owned} have their own train keys; set those instead")
        return self

    @model_validator(mode="after")
    def _families_have_sizes(self) -> Train:
        if len(set(self.families)) < len(self.families):
            raise ValueError(f"families: {self.families} names a family twice")
        for family in self.families:
            if not set(self.sizes) & set(FAMILIES[family].sizes):
                have = ", ".join(FAMILIES[family].sizes)
                raise ValueError(f"families: {family} has sizes {have} only, and sizes {self.sizes} has none of them")
        return self

    def sizes_for(self, variant: str, family: str = DEFAULT_FAMILY) -> list[ModelSize]:
        """The sizes ``family`` is trained at on ``variant`` (``sizes`` order).

        ``sizes``, or those of them the variant's ``sizes_by_variant`` entry lists, that the family has.
        """
        narrowed = next((sizes for name, sizes in self.sizes_by_variant.items() if name == variant), self.sizes)
        return [s for s in self.sizes if s in narrowed and s in FAMILIES[family].sizes]

    @property
    def models(self) -> list[tuple[str, str, ModelSize]]:
        """Every (variant, family, size) trained from scratch, variant by variant: the grid of train and evaluate."""
        return [
            (variant, family, size)
            for variant in self.variants
            for family in self.families
            for size in self.sizes_for(variant, family)
        ]


class Evaluate(_Section):
    """How detections are made and scored: the COCO protocol, or the study authors' (``protocol: authors``).

    ``conf``, ``max_det``, ``batch`` and ``backend`` belong to the COCO protocol; the authors'
    protocol fixes its own (conf 0.25, 300 detections, batch 1, integer boxes) and scores with the
    authors' scorer on pycocotools (:mod:`anonbench.analysis.cocoeval`).
    """

    variants: Annotated[list[str], Field(min_length=1)] = [ORIGINAL, *CLASSIC_METHODS]
    protocol: Literal["coco", "authors"] = "coco"
    conf: Fraction = 0.001
    iou: Fraction = 0.7
    max_det: PositiveInt = 100
    batch: PositiveInt = 16
    backend: Literal["faster-coco-eval", "pycocotools"] = "faster-coco-eval"


class FinetuneBase(_Section):
    """The trained model a fine-tune starts from."""

    variant: str = ORIGINAL
    size: ModelSize = "m"


class Finetune(_Section):
    """Fine-tune a trained model on an anonymized subset with frozen layer ranges (Q6, Q7)."""

    base: FinetuneBase = FinetuneBase()
    variant: str = "dp2_fullbody"
    fraction: Fraction = 0.2
    fraction_of: Literal["train", "eligible"] = "eligible"
    epochs: PositiveInt = 30
    batch: PositiveInt = 40
    lr0: Annotated[float, Field(gt=0.0)] = 0.001
    lrf: Annotated[float, Field(gt=0.0)] = 0.01
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.85
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0007
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 4.0
    warmup_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.8
    optimizer: str = "SGD"
    freeze: dict[str, list[int]] = Field(
        default_factory=lambda: {
            "backbone": [0, 10],
            "backbone_no_psa": [0, 9],
            "neck": [11, 22],
            "neck_head": [11, 23],
            "psa_neck_head": [10, 23],
            "none": [],
        }
    )

    @field_validator("freeze")
    @classmethod
    def _ranges(cls, freeze: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, bounds in freeze.items():
            if bounds and (len(bounds) != 2 or bounds[0] > bounds[1]):
                raise ValueError(f"{name}: a range is [first, last] with first <= last, or [] for none")
            if any(not 0 <= i <= YOLOV10_LAST_LAYER for i in bounds):
                raise ValueError(f"{name}: layer index outside 0..{YOLOV10_LAST_LAYER}")
        return freeze

    def frozen_layers(self, name: str) -> list[int]:
        """Layer indices frozen by freeze config ``name`` (ranges are inclusive)."""
        bounds = self.freeze[name]
        return list(range(bounds[0], bounds[1] + 1)) if bounds else []


class Relabel(_Section):
    """Stale-label proposals: an object mostly inside the anonymized region with low SSIM is flagged.

    A person box is extended where the anonymized region reaches at least ``min_extend_px`` beyond it.
    """

    inside_threshold: Fraction = 0.5
    ssim_threshold: Fraction = 0.5
    min_extend_px: Annotated[float, Field(gt=0.0)] = 1.0


class Report(_Section):
    """Bootstrap confidence intervals, layer drift (CKA) and the per-class views of the study report."""

    bootstrap_samples: PositiveInt = 1000
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    cka_images: Annotated[int, Field(ge=4)] = 16  # the debiased CKA estimator needs at least 4 examples
    tracking_ui: str = "http://127.0.0.1:5000"
    # The combination whose per-class AP change (against Org on Org) Q4 and Q5 show class by class.
    per_class_combination: Literal["Org on Anon", "Anon on Org", "Anon on Anon"] = "Org on Anon"


class Tracking(_Section):
    """MLflow; the MLFLOW_TRACKING_URI environment variable wins over `uri`."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "anonbench"

    @property
    def resolved_uri(self) -> str:
        """The tracking URI in force: the environment's, else the configured one."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.uri


class Publish(_Section):
    """Where the publish stage versions a KFP workspace's datasets; ANONBENCH_DVC_REMOTE wins over `remote`.

    ``run`` names the folder the run's pointers go to in the remote (``runs/<run>/``); by default the
    workspace folder's name.
    """

    remote: str | None = None
    run: str | None = None

    @property
    def resolved_remote(self) -> str | None:
        """The DVC remote URL in force: the environment's (the cluster's Secret), else the configured one."""
        return os.environ.get("ANONBENCH_DVC_REMOTE") or self.remote


class GpuMemory(_Section):
    """GPU memory a YOLOv10 training needs, in GiB: ``base_gb + per_image_gb[size] x batch x (imgsz / 640)^2``.

    An estimate (``anonbench preflight`` compares it with a node class's GPU memory); params.yaml
    gives its source.
    """

    base_gb: Annotated[float, Field(ge=0.0)]
    per_image_gb: dict[ModelSize, Annotated[float, Field(gt=0.0)]]

    def need(self, size: ModelSize, batch: int, imgsz: int) -> float:
        """GiB a training of ``size`` at ``batch`` images of ``imgsz`` pixels needs on one GPU."""
        return self.base_gb + self.per_image_gb[size] * batch * (imgsz / 640) ** 2


class Preflight(_Section):
    """What ``anonbench preflight`` checks against (docs/orchestration.md, "Preflight")."""

    train_gpu_memory: GpuMemory


class Config(_Section):
    """The whole, validated parameter set of one run."""

    profile: str = "mini"
    seed: Annotated[int, Field(ge=0)] = 0
    policy: Literal["strict", "skip"] = "strict"
    workers: Annotated[int, Field(ge=0)] = 0
    worker_memory_gb: Annotated[float, Field(gt=0.0)] = 1.0
    paths: Paths = Paths()
    data: Data = Data()
    prepare: Prepare = Prepare()
    classes: Classes
    anonymize: Anonymize = Field(default_factory=Anonymize)  # not at import: it loads the installed methods
    ssim: Ssim = Ssim()
    privacy: Privacy = Privacy()
    export: Export = Export()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    finetune: Finetune = Finetune()
    relabel: Relabel = Relabel()
    report: Report = Report()
    tracking: Tracking = Tracking()
    publish: Publish = Publish()
    preflight: Preflight

    @model_validator(mode="after")
    def _class_names(self) -> Config:
        if self.data.source not in COCO_SOURCES:
            return self  # checked against the dataset's own table where the lists are used
        for key, names in self.classes.lists().items():
            unknown = [n for n in names if n not in COCO_NAMES]
            if unknown:
                raise ValueError(f"{key}: not a COCO category: {', '.join(repr(n) for n in unknown)}")
        return self

    @model_validator(mode="after")
    def _variants_exist(self) -> Config:
        known = {ORIGINAL, *self.anonymize.methods}
        for key, names in (("train.variants", self.train.variants), ("evaluate.variants", self.evaluate.variants)):
            missing = [n for n in names if n not in known]
            if missing:
                raise ValueError(f"{key}: {missing} not among 'org' and anonymize.methods {sorted(known)}")
        from anonbench.anonymizers import plugins

        containers = self.anonymize.containers
        if odd := [v for v in self.train.sizes_by_variant if v not in (ORIGINAL, *plugins.names(), *containers)]:
            raise ValueError(f"train.sizes_by_variant: {plugins.unknown(odd[0], containers)}")
        if self.finetune.variant not in self.anonymize.methods:
            raise ValueError(f"finetune.variant: {self.finetune.variant!r} is not in anonymize.methods")
        if DEFAULT_FAMILY not in self.train.families:
            raise ValueError(
                f"train.families: {self.train.families} lacks {DEFAULT_FAMILY}, the family of the fine-tunes' base "
                "model and of layer drift (their layer ranges are YOLOv10's)"
            )
        if self.finetune.base.variant not in self.train.variants:
            raise ValueError(f"finetune.base.variant: {self.finetune.base.variant!r} is not in train.variants")
        base = self.finetune.base
        if base.size not in self.train.sizes_for(base.variant):
            raise ValueError(f"finetune.base.size: {base.variant}-{base.size} is not trained (train.sizes)")
        # The report compares every trained variant at the base size (Q1, Q3-Q5, Q8): each needs it.
        missing = [v for v in self.train.variants if base.size not in self.train.sizes_for(v)]
        if missing:
            raise ValueError(
                f"train.sizes_by_variant: {missing} not trained at {base.size!r} (finetune.base.size), the size "
                "at which the report compares every variant"
            )
        return self

    @property
    def n_workers(self) -> int:
        """Worker processes for per-image stages: `workers`, or (when 0) what this process's CPUs and memory allow.

        A pod sees every core of its node in ``os.cpu_count()``; the count here is bounded by the CPU
        affinity, the cgroup CPU quota and the memory limit at ``worker_memory_gb`` per worker
        (:func:`anonbench.parallel.available_workers`).
        """
        from anonbench.parallel import available_workers

        return self.workers or available_workers(int(self.worker_memory_gb * 2**30))

    @property
    def source_root(self) -> Path:
        """The original dataset in COCO layout, as the fetch stage materializes it."""
        return self.paths.data / "raw" / self.data.source

    def local_copy(self) -> Path | None:
        """An existing copy of the source: `data.local_copy`, else its environment variable."""
        if self.data.local_copy is not None:
            return self.data.local_copy
        env = os.environ.get(LOCAL_COPY_ENV[self.data.source])
        return Path(env) if env else None

    def variant_root(self, variant: str) -> Path:
        """COCO-layout root of a variant: the original for 'org', else the anonymized copy."""
        if variant == ORIGINAL:
            return self.source_root
        return self.paths.data / "variants" / variant

    def image_dir(self, variant: str, split: str) -> Path:
        """Image folder of one split of a variant (COCO layout: `<root>/<split>/`)."""
        return self.variant_root(variant) / split

    def annotation_file(self, variant: str, split: str) -> Path:
        """Instances JSON of one split of a variant (COCO layout)."""
        return self.variant_root(variant) / "annotations" / f"instances_{split}.json"


def model_id(variant: str, size: str, family: str = DEFAULT_FAMILY) -> str:
    """Model id of a model trained from scratch (its folder under ``paths.models``).

    ``org-n`` for YOLOv10 (the study's ids from before families existed), ``org-yolov8-n`` for any other family.
    """
    return f"{variant}-{size}" if family == DEFAULT_FAMILY else f"{variant}-{family}-{size}"


def split_model_id(trained_id: str) -> tuple[str, str, str]:
    """``(variant, family, size)`` of a trained model's id: the inverse of :func:`model_id`.

    The variant is whatever precedes the family (or the size); checking it is the caller's business.
    """
    head, _, size = trained_id.rpartition("-")
    variant, _, family = head.rpartition("-")
    if variant and family in FAMILIES and family != DEFAULT_FAMILY:
        return variant, family, size
    return head, DEFAULT_FAMILY, size


def finetune_model_id(freeze: str) -> str:
    """Model id of the fine-tune with freeze config ``freeze`` (its folder under ``paths.models``)."""
    return f"{FINETUNE_PREFIX}{freeze}"


def deep_merge(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    """Merge ``diff`` into a copy of ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in diff.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(tree: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``dotted.key=value`` override; the value is parsed as YAML.

    Args:
        tree: Raw (unvalidated) parameter mapping.
        assignment: For example ``train.epochs=2`` or ``train.sizes=[n,s]``.

    Returns:
        A new mapping with the override applied.

    Raises:
        ConfigError: If the assignment has no ``=`` or walks through a non-mapping.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    diff: dict[str, Any] = {keys[-1]: yaml.safe_load(raw)}
    for key in reversed(keys[:-1]):
        diff = {key: diff}
    node: Any = tree
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
    return deep_merge(tree, diff)


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, SectionError):  # a method's own section: its key and message, already with the value
        more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
        return f"{source}: {key}.{inner.key}: {inner.message}{more}"
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    given = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(given, dict) else f" (got {given!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    if not first["loc"]:  # a cross-section check: its message starts with the key
        return f"{source}: {message}{more}"
    return f"{source}: {key}: {message}{shown}{more}"


def resolve(raw: dict[str, Any], profile: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Merge a raw params mapping with its profile diff and overrides (no validation).

    A profile may name another in ``extends``: its diff is merged on top of that profile's
    (resolved the same way), so an extension of ``paper`` states only what it changes.

    Args:
        raw: The mapping read from params.yaml, including ``profiles``.
        profile: Profile to apply; defaults to the file's ``profile`` key.
        overrides: ``dotted.key=value`` strings applied last.

    Returns:
        The merged mapping, without ``profiles``, with ``profile`` set.

    Raises:
        ConfigError: For an unknown profile or ``extends`` target, or an ``extends`` loop.
    """
    profiles = raw.get("profiles") or {}
    base = {k: v for k, v in raw.items() if k != "profiles"}
    name = profile or base.get("profile", "mini")
    merged = deep_merge(base, _profile_diff(profiles, name))
    merged["profile"] = name
    for assignment in overrides or []:
        merged = apply_override(merged, assignment)
    return merged


def _profile_diff(profiles: dict[str, Any], name: str) -> dict[str, Any]:
    """The diff of profile ``name`` with the diffs of the profiles it extends merged below it."""
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if not isinstance(current, str) or current not in profiles:
            by = f" (extended by {chain[-1]!r})" if chain else ""
            raise ConfigError(f"profile {current!r}{by} is not defined under 'profiles' (have: {sorted(profiles)})")
        if current in chain:
            raise ConfigError(f"profile {name!r}: 'extends' loops: {' -> '.join([*chain, current])}")
        chain.append(current)
        current = (profiles[current] or {}).get("extends")
    diff: dict[str, Any] = {}
    for link in reversed(chain):
        diff = deep_merge(diff, {k: v for k, v in (profiles[link] or {}).items() if k != "extends"})
    return diff


def load_config(
    path: Path | str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None
) -> Config:
    """Read, merge and validate parameters; the one entry point every stage uses.

    Args:
        path: The params file.
        profile: Profile to apply (default: the file's ``profile`` key).
        overrides: ``dotted.key=value`` overrides applied after the profile.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: With one line naming the file, the key and the problem.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    merged = resolve(raw, profile, overrides)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(str(path), err)) from None
