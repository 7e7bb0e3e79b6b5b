"""Anonymizer plugins: the interface every per-person anonymization method implements, and their registry.

A method is an :class:`Anonymizer` published under the entry point group :data:`GROUP`
(``anonbench.anonymizers``), the entry point's name being the method's name. anonbench's own classic
methods (blur, pixelate, mask) are registered there by anonbench's pyproject.toml, so a plugin and a
built-in take the same path through every stage: name it in ``anonymize.methods`` and ``anonymize``,
``ssim``, ``export``, ``train``, ``evaluate``, ``relabel`` and the report take it up. Its parameters live
in params.yaml under ``anonymize.<name>``, validated by the schema it declares when the parameters
load (docs/plugins.md). DeepPrivacy2's methods (``dp2_fullbody``, ``dp2_face``) are not plugins: they
run in their own environment with their own person handling (:mod:`anonbench.anonymizers.dp2`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from anonbench.names import DP2_METHODS, ORIGINAL, ConfigError

if TYPE_CHECKING:
    from anonbench.anonymizers.masks import Person

GROUP = "anonbench.anonymizers"
# Names no plugin may take: the original dataset's variant name and DeepPrivacy2's methods.
RESERVED = (ORIGINAL, *DP2_METHODS)
# anonbench's own entry points (pyproject.toml): missing, the installed metadata is older than the code.
BUILT_IN = ("blur", "pixelate", "mask", "blur_face", "pixelate_face", "mask_face")


class PluginError(ConfigError):
    """An installed anonymizer plugin breaks the interface; the message names it and says how.

    A :class:`ConfigError`: no parameters can be validated while it is installed, and the CLI says so in one line.
    """


class UnknownMethod(ValueError):
    """A method name that no installed package provides; the message lists the installed ones."""


class Settings(BaseModel):
    """Base of a method's parameter schema: frozen, unknown keys rejected, every field with a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Painted(NamedTuple):
    """What a method returns for one image."""

    image: np.ndarray
    """The anonymized image: H x W x 3 BGR uint8, the input's shape."""
    region: np.ndarray
    """H x W bool: the pixels the method painted (the anonymized region ssim, relabel and coverage read)."""
    counts: Mapping[str, int] = MappingProxyType({})
    """The image's value of each count the method declares (:attr:`Anonymizer.counts`); none by default."""


P = TypeVar("P", bound=Settings)
Function = Callable[[np.ndarray, Sequence["Person"], P, np.random.Generator], Painted]


@dataclass(frozen=True)
class Anonymizer(Generic[P]):
    """One anonymization method, as a plugin package publishes it.

    ``anonymize(image, persons, params, rng)`` gets the original image (H x W x 3 BGR uint8, never to be
    changed in place), its persons to anonymize (:class:`anonbench.anonymizers.masks.Person`: each one's
    dilated mask cropped to its ``box``, largest first), the validated ``params`` and a generator seeded
    from ``seed`` and the image id (the same for every rerun, worker count and shard). It returns the
    anonymized image and the region it painted.
    """

    name: str
    """The method's name in params.yaml, the variant's folder and every report; the entry point's name."""
    anonymize: Function[P]
    params: type[P]
    """Schema of ``anonymize.<name>`` in params.yaml (a :class:`Settings`; every field needs a default)."""
    deterministic: bool = True
    """Same inputs and seed give the same pixels: reruns, workers and shards are byte-identical."""
    gpu: bool = False
    """Needs a GPU: the anonymize stage runs one worker process (one model per GPU; shard across GPUs)."""
    summary: str = ""
    """One line on what happens inside each person's mask (the report and ``anonbench methods``)."""
    counts: tuple[str, ...] = ()
    """Names of the per-image counts it reports in :attr:`Painted.counts` (e.g. a face-only method's
    ``persons_without_face``): the anonymize stage records them with each image and sums them into the
    split's coverage file."""

    def __call__(self, image: np.ndarray, persons: Sequence[Person], params: P, rng: np.random.Generator) -> Painted:
        """Run the method on one image and check its answer keeps the contract.

        Raises:
            PluginError: When the image or region returned has the wrong shape or type, or the counts are not
                the declared ones.
        """
        painted = self.anonymize(image, persons, params, rng)
        if not isinstance(painted, tuple) or len(painted) not in (2, 3):
            raise PluginError(f"anonymizer {self.name!r}: returned {type(painted).__name__}, not (image, region)")
        out, region, *rest = painted
        counts = dict(rest[0]) if rest else {}
        if sorted(counts) != sorted(self.counts) or not all(type(v) is int for v in counts.values()):
            raise PluginError(f"anonymizer {self.name!r}: counts {counts}, expected ints for {list(self.counts)}")
        if not isinstance(out, np.ndarray) or out.shape != image.shape or out.dtype != image.dtype:
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise PluginError(f"anonymizer {self.name!r}: image {got}, expected {image.shape} {image.dtype}")
        if not isinstance(region, np.ndarray) or region.shape != image.shape[:2] or region.dtype != bool:
            got = f"{region.shape} {region.dtype}" if isinstance(region, np.ndarray) else type(region).__name__
            raise PluginError(f"anonymizer {self.name!r}: region {got}, expected {image.shape[:2]} bool")
        return Painted(out, region, counts)

    def settings(self, raw: Any) -> P:
        """Validate the method's ``anonymize.<name>`` section (None: every default).

        Raises:
            ValidationError: For an unknown key or a bad value (pydantic's, locations inside the section).
        """
        return self.params.model_validate({} if raw is None else raw)


def _check(name: str, loaded: Any, source: str) -> Anonymizer[Any]:
    """The entry point's object, if it keeps the interface.

    Raises:
        PluginError: Naming the entry point and what is wrong.
    """
    where = f"entry point {name!r} ({source})"
    if not isinstance(loaded, Anonymizer):
        raise PluginError(f"{where}: is a {type(loaded).__name__}, not an anonbench.anonymizers.plugins.Anonymizer")
    if loaded.name != name:
        raise PluginError(f"{where}: the Anonymizer is named {loaded.name!r}; the entry point must carry its name")
    if name in RESERVED:
        raise PluginError(f"{where}: {name!r} is reserved ({', '.join(RESERVED)})")
    if not (isinstance(loaded.params, type) and issubclass(loaded.params, Settings)):
        raise PluginError(f"{where}: params must be a subclass of anonbench.anonymizers.plugins.Settings")
    try:
        loaded.params()
    except ValidationError:
        raise PluginError(f"{where}: every field of {loaded.params.__name__} needs a default") from None
    return loaded


@functools.cache
def installed() -> dict[str, Anonymizer[Any]]:
    """Every anonymizer installed in this environment, by name (sorted), loaded once per process.

    Raises:
        PluginError: When a plugin breaks the interface, two packages publish one name, or anonbench's own
            entry points are missing (its installed metadata predates them: reinstall anonbench).
    """
    found: dict[str, Anonymizer[Any]] = {}
    for point in entry_points(group=GROUP):
        source = f"{point.value}" + (f" from {point.dist.name}" if point.dist else "")
        if point.name in found:
            raise PluginError(f"entry point {point.name!r} ({source}): another package publishes that name too")
        try:
            loaded = point.load()
        except Exception as exc:  # a plugin's import: whatever it raises is that plugin's fault
            raise PluginError(f"entry point {point.name!r} ({source}) failed to load: {exc!r}") from exc
        found[point.name] = _check(point.name, loaded, source)
    if missing := [name for name in BUILT_IN if name not in found]:
        raise PluginError(
            f"anonbench's own anonymizers {missing} are not registered: its installed metadata predates the "
            f"{GROUP!r} entry points; reinstall anonbench (make install, or pip install -e .)"
        )
    return dict(sorted(found.items()))


def package(name: str) -> str:
    """The distribution and version that publishes installed method ``name``, e.g. ``anonbench 0.1.0``."""
    point = next(iter(entry_points(group=GROUP, name=name)), None)
    return f"{point.dist.name} {point.dist.version}" if point is not None and point.dist else "unknown"


def get(name: str) -> Anonymizer[Any]:
    """The installed anonymizer ``name``.

    Raises:
        UnknownMethod: With one line listing the installed methods.
    """
    methods = installed()
    if name not in methods:
        raise UnknownMethod(unknown(name))
    return methods[name]


def names() -> list[str]:
    """Every method a study can name: the installed anonymizers and DeepPrivacy2's."""
    return [*installed(), *DP2_METHODS]


def unknown(name: str, containers: Iterable[str] = ()) -> str:
    """The one line that says ``name`` is no installed method (nor container method) and which are."""
    defined = f"; container methods: {', '.join(containers)}" if containers else ""
    return f"unknown anonymization method {name!r}; installed: {', '.join(names())}{defined} (docs/plugins.md)"
