"""Per-image stage manifests: every image is accounted for, nothing is lost silently.

A stage records one :class:`Record` per input image (or per bad record) with a
status and, unless ``ok``, the reason. The manifest's counts are what the
closing summary and MLflow show; a ``skip`` policy run lists every skip here.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from anonbench.io import atomic_open

Status = Literal["ok", "skipped", "error"]


@dataclass(frozen=True)
class Record:
    """What happened to one image (or one annotation record) in a stage."""

    key: str
    status: Status
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """All records of one stage run over one split."""

    stage: str
    split: str
    records: list[Record] = field(default_factory=list)

    def add(self, key: str, status: Status, reason: str = "", **details: Any) -> None:
        """Record the outcome for ``key`` (an image file name or a record id)."""
        self.records.append(Record(key, status, reason, details))

    @property
    def counts(self) -> dict[str, int]:
        """Number of records per status, every status present (zeros included)."""
        counted = Counter(r.status for r in self.records)
        return {status: counted.get(status, 0) for status in ("ok", "skipped", "error")}

    def to_dict(self) -> dict[str, Any]:
        """Serializable form, records sorted by key so reruns are byte-identical."""
        return {**self._head(), "records": [asdict(r) for r in self._sorted()]}

    def write(self, path: Path) -> Path:
        """Write the manifest atomically as JSON and return its path.

        The bytes are :func:`anonbench.io.atomic_write_json`'s for :meth:`to_dict`, written a record at a
        time: a COCO-sized manifest as one indented string would be hundreds of MB.
        """
        shell = json.dumps({**self._head(), "records": []}, indent=2, sort_keys=True)
        head, tail = shell.split('"records": []', 1)
        with atomic_open(path) as out:
            out.write(f'{head}"records": ['.encode())
            for n, record in enumerate(self._sorted()):
                item = json.dumps(asdict(record), indent=2, sort_keys=True, allow_nan=True)
                out.write(("," if n else "").encode() + b"\n" + textwrap.indent(item, "    ").encode())
            out.write((f"\n  ]{tail}\n" if self.records else f"]{tail}\n").encode())
        return path

    def _head(self) -> dict[str, Any]:
        return {"stage": self.stage, "split": self.split, "counts": self.counts}

    def _sorted(self) -> list[Record]:
        return sorted(self.records, key=lambda r: r.key)
