"""Manifests: written a record at a time, with the bytes of the whole document dumped at once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anonbench.io import atomic_write_json
from anonbench.manifest import Manifest


@pytest.mark.parametrize("records", [0, 1, 5])
def test_streamed_manifest_is_the_json_dump_of_the_whole_document(tmp_path: Path, records: int) -> None:
    manifest = Manifest("anonymize", "val2017")
    for i in range(records):
        details = {"coverage": math.nan if i == 2 else i / 7, "nested": {"ids": [i, None], "empty": {}}, "none": []}
        manifest.add(
            f"{100 - i:012d}.jpg", "ok" if i % 2 else "skipped", "" if i % 2 else 'a "quoted"\nreason', **details
        )
    whole = atomic_write_json(tmp_path / "whole.json", manifest.to_dict()).read_bytes()
    assert manifest.write(tmp_path / "streamed.json").read_bytes() == whole
    read = json.loads(whole)
    assert read["counts"] == manifest.counts and len(read["records"]) == records
    assert [r["key"] for r in read["records"]] == sorted(r.key for r in manifest.records)
