"""Reading COCO files: the streamed image list equals the loaded one and leaves the annotations unread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anonbench.coco import CocoError, read_instances, read_list

IMAGES = [
    {"id": 7, "file_name": "000000000007.jpg", "width": 640, "height": 480, "ratio": 1.5},
    {"id": 9, "file_name": "000000000009.jpg", "width": 480, "height": 640, "ratio": 0.75},
]


def test_read_list_is_the_images_list_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    annotations = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1.5, 2.25, 3.0, 4.0], "area": 12.0}]
    categories = [{"id": 1, "name": "person"}]
    path.write_text(json.dumps({"info": {}, "images": IMAGES, "annotations": annotations, "categories": categories}))
    assert read_list(path, "images") == read_instances(path)["images"] == IMAGES


def test_read_list_stops_after_the_list(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    # Broken after the images: only a reader that went on into the annotations would notice.
    path.write_text('{"images": ' + json.dumps(IMAGES) + ', "annotations": [{"id": 1,,,')
    assert read_list(path, "images") == IMAGES
    with pytest.raises(CocoError, match="malformed JSON"):
        read_instances(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "annotation file not found"),
        ('{"images": [{"id": 1,,', "malformed JSON"),
        ('{"annotations": []}', r"missing required key\(s\) \['images'\]"),
        ('{"images": {"id": 1}}', r"missing required key\(s\) \['images'\]"),
    ],
)
def test_read_list_names_the_file_and_the_problem(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "instances.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CocoError, match=message) as caught:
        read_list(path, "images")
    assert str(path) in str(caught.value)
