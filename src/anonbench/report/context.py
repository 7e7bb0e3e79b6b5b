"""What every section of the report shares: the paper's names, the section context, small helpers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anonbench.config import FINETUNE_PREFIX, ORIGINAL, Config, model_id
from anonbench.families import DEFAULT_FAMILY
from anonbench.report.doc import Document
from anonbench.study import Delta, EvalRecord, RunLinks, Study, percent

SIZE_ORDER = "nsmlx"


FREQUENCIES: tuple[Literal["low", "medium", "high"], ...] = ("low", "medium", "high")


OBJECT_SIZES: tuple[Literal["small", "medium", "large"], ...] = ("small", "medium", "large")


# The paper's names: which model (trained on) on which validation images (evaluated on).
COMBINATIONS = ("Org on Org", "Org on Anon", "Anon on Org", "Anon on Anon")


ANON_COMBINATIONS = COMBINATIONS[1:]


STATS = ("AP", "AP50")


NOT_RUN = "not run"


@dataclass
class Context:
    """What every section needs: the results, the link maker, where figures go, what was made and found void."""

    study: Study
    links: RunLinks
    figures: Path
    made: list[Path] = field(default_factory=list)
    void_sections: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def cfg(self) -> Config:
        """The configuration the report was made with."""
        return self.study.cfg

    def figure(self, doc: Document, path: Path, caption: str) -> None:
        """Add a written figure to the document and remember it."""
        self.made.append(path)
        doc.figure(path, caption)

    def ap(self, record: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP") -> str:
        """AP or AP50 of an evaluation (over ``classes``) in percent, linked to its run; void with its reason."""
        if record is None:
            return NOT_RUN
        if record.void:
            return self.links.text(f"void ({record.void_reason})", record.run_id)
        value = record.ap(classes, stat)
        return "n/a" if value is None else self.links.text(percent(value), record.run_id)

    def delta(
        self, after: EvalRecord | None, before: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP"
    ) -> Delta:
        """Paired difference with its interval; undefined when either evaluation is missing, void when one is."""
        if after is None or before is None:
            return Delta(None)
        return self.study.delta(after, before, classes, stat)

    def linked_delta(
        self, after: EvalRecord | None, before: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP"
    ) -> str:
        """A difference in points with its interval, linked to the run of ``after``."""
        if after is None or before is None:
            return NOT_RUN
        if after.key == before.key:
            return "reference"
        delta = self.delta(after, before, classes, stat)
        return self.links.text(delta.text(), after.run_id) if delta.value is not None or delta.void else delta.text()

    def org_on_org(self) -> tuple[str | None, EvalRecord | None]:
        """The reference size and the Org model's evaluation on original data at that size."""
        size = reference_size(self.study)
        return size, self.study.find(f"{ORIGINAL}-{size}", ORIGINAL) if size else None

    def combination(self, method: str, size: str, name: str, family: str = DEFAULT_FAMILY) -> EvalRecord | None:
        """The evaluation a paper name stands for, for one anonymization method, model size and detector family."""
        trained_on, _, evaluated_on = name.partition(" on ")
        model = ORIGINAL if trained_on == "Org" else method
        data = ORIGINAL if evaluated_on == "Org" else method
        return self.study.find(model_id(model, size, family), data)

    def check_void(
        self, doc: Document, section: str, records: Iterable[EvalRecord | None], what: str = "this section"
    ) -> bool:
        """Say plainly when every evaluation a section (or ``what`` part of it) uses is void; count it for the header.

        Returns:
            True when all of them are void (there is no number to show).
        """
        found = list({r.key: r for r in records if r is not None}.values())
        return self.count_void(doc, section, [str(r.void_reason) for r in found if r.void], len(found), what)

    def count_void(self, doc: Document, section: str, reasons: list[str], total: int, what: str) -> bool:
        """:meth:`check_void` for results given as their void reasons (one per void result) out of ``total``."""
        if reasons:
            self.void_sections[section] = (len(reasons), total)
        if not total or len(reasons) < total:
            return False
        doc.note(
            f"**All void:** every result {what} uses ({total}) is void ({', '.join(sorted(set(reasons)))}): "
            "there is no AP and no difference to show."
        )
        return True


def trained(study: Study) -> list[EvalRecord]:
    """Evaluations of YOLOv10s trained from scratch (not fine-tuned): the family every question is asked of."""
    return [e for e in study.evaluations if not e.model_id.startswith(FINETUNE_PREFIX) and e.family == DEFAULT_FAMILY]


def sizes_of(records: list[EvalRecord]) -> list[str]:
    """Model sizes present, smallest first."""
    return sorted({e.model_size for e in records}, key=SIZE_ORDER.index)


def reference_size(study: Study) -> str | None:
    """The size single-size questions use: the fine-tune base size when trained, else the smallest."""
    sizes = sizes_of(trained(study))
    if not sizes:
        return None
    return study.cfg.finetune.base.size if study.cfg.finetune.base.size in sizes else sizes[0]


def methods_of(study: Study) -> list[str]:
    """Anonymization methods (configured order) that some trained model was trained or evaluated on."""
    seen = {e.train_data for e in trained(study)} | {e.eval_data for e in trained(study)}
    return [m for m in study.cfg.anonymize.methods if m in seen]


def in_grid(cfg: Config, method: str, size: str) -> bool:
    """Whether the questions across sizes show ``method`` at ``size``.

    True where the grid trains a model on it at that size, and for a method no model is trained on
    (only its Org combinations exist); False where ``train.sizes_by_variant`` leaves the size out
    (the paper profile trains the classic methods at m only: Q1 and Q3 compare them there).
    """
    return method not in cfg.train.variants or size in cfg.train.sizes_for(method)


def grid_text(cfg: Config) -> str:
    """The trained grid in words: ``n, s, m`` plus the variants that ``train.sizes_by_variant`` narrows."""
    narrowed = [f"{v} at {', '.join(cfg.train.sizes_for(v))}" for v in cfg.train.variants
                if cfg.train.sizes_for(v) != cfg.train.sizes]  # fmt: skip
    return ", ".join(cfg.train.sizes) + (f" ({'; '.join(narrowed)} only)" if narrowed else "")


def variants_in(cfg: Config, names: set[str]) -> list[str]:
    """Variant names in the configured order (org first)."""
    order = [ORIGINAL, *cfg.anonymize.methods]
    return sorted(names, key=lambda v: order.index(v) if v in order else len(order))


def significance(delta: Delta) -> str:
    """Plain words for whether an interval excludes zero."""
    if delta.value is None or not delta.interval_known:
        return "no interval"
    assert delta.low is not None and delta.high is not None
    return "interval excludes 0" if delta.low > 0 or delta.high < 0 else "interval includes 0"


def missing_models(doc: Document, what: str) -> None:
    """Say that the models or evaluations ``what`` names are missing, and which stages make them."""
    doc.missing(f"{what} (run `anonbench train` and `anonbench evaluate` for the models and variants in params.yaml).")


def scaled(value: float | None) -> float | None:
    """An AP (0-1) or AP difference as a percentage (points) for a figure."""
    return None if value is None else 100 * value


def ap_of(record: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP") -> float | None:
    """AP (0-1) of an evaluation over ``classes``; None when it does not exist (or has no number)."""
    return None if record is None else record.ap(classes, stat)


def ssim_mean(entry: dict[str, Any], level: str, component: str = "ssim") -> float | None:
    """The mean of an SSIM summary entry's ``level`` (image, box) and ``component`` (ssim, luminance, ...)."""
    value: float | None = entry.get(level, {}).get(component, {}).get("mean")
    return value


def fmt(value: float | None) -> str:
    """A 0-1 value with three decimals for running text; n/a when undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def note_absent(doc: Document, classes: list[str]) -> None:
    """Say which Table 5 classes this dataset's category table lacks (prepare lists them in stats.json)."""
    if classes:
        doc.note(
            f"Not among this dataset's categories, so left out: {', '.join(classes)} "
            "(prepare's stats.json, classes_absent)."
        )
