"""Reading COCO files: streamed lists and the per-image index give what loading the whole file gives."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
from pathlib import Path

import pytest

from anonbench.coco import AnnotationLookup, CocoError, annotations_by_image, indexed, read_instances, read_list

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


def _split_file(tmp_path: Path) -> Path:
    """A small instances file with COCO's key order plus a key COCO does not define, after the categories."""
    annotations = [
        {"id": 1, "image_id": 9, "category_id": 1, "bbox": [1.5, 2.25, 3.0, 4.0], "area": 12.0, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100, "segmentation": [[0, 0, 1, 1]]},
        {"id": 3, "image_id": 9, "category_id": 2, "bbox": [5, 5, 1e-3, 2.5], "area": 0.0025, "note": "caf\u00e9"},
    ]
    data = {
        "info": {"year": 2017, "description": "tiny"},
        "licenses": [{"id": 1, "name": "x"}],
        "images": [*IMAGES, {"id": 11, "file_name": "000000000011.jpg", "width": 8, "height": 8}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
        "extra": {"kept": [1, 2.5, None, True]},
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def test_index_gives_each_image_the_annotations_loading_the_file_gives(tmp_path: Path) -> None:
    path = _split_file(tmp_path)
    loaded = read_instances(path)
    with indexed(path) as index:
        assert index.images == loaded["images"]
        assert index.categories == loaded["categories"]
        assert list(index.keys) == list(loaded)
        by_image = annotations_by_image(loaded)
        assert {im["id"]: index.lookup.of(im["id"]) for im in index.images} == by_image
        assert by_image[11] == [] and [a["id"] for a in by_image[9]] == [1, 3]


def test_index_writes_the_bytes_json_dumps_writes_for_the_edited_file(tmp_path: Path) -> None:
    path = _split_file(tmp_path)
    loaded = read_instances(path)
    renamed = [{**im, "file_name": f"{im['id']}.png"} for im in loaded["images"] if im["id"] != 9]
    expected = {
        **loaded,
        "images": renamed,
        "annotations": [a for a in loaded["annotations"] if a["image_id"] != 9],
    }
    with indexed(path) as index:
        same = index.write(tmp_path / "same.json", index.images, {})
        edited = index.write(tmp_path / "edited.json", iter(renamed), {9: []})
    assert same.read_bytes() == json.dumps(loaded, separators=(",", ":")).encode()
    assert edited.read_bytes() == json.dumps(expected, separators=(",", ":")).encode()


def test_index_write_puts_an_edited_image_where_its_first_annotation_was(tmp_path: Path) -> None:
    path = _split_file(tmp_path)
    loaded = read_instances(path)
    new_7 = {"id": 20, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4}
    new_11 = {"id": 21, "image_id": 11, "category_id": 2, "bbox": [0, 0, 1, 1], "area": 1}
    with indexed(path) as index:
        written = index.write(tmp_path / "edited.json", index.images, {9: [], 11: [new_11], 7: [new_7]})
    assert [a["id"] for a in read_instances(written)["annotations"]] == [20, 21]
    with indexed(path) as index:
        written = index.write(tmp_path / "edited.json", index.images, {7: [new_7, new_11 | {"image_id": 7}]})
    assert [a["id"] for a in read_instances(written)["annotations"]] == [1, 20, 21, 3]
    assert read_instances(written)["images"] == loaded["images"]


def _of(lookup: AnnotationLookup, image_id: int) -> list[int]:
    return [a["id"] for a in lookup.of(image_id)]


def test_index_lookup_is_sent_to_worker_processes_by_its_path(tmp_path: Path) -> None:
    with indexed(_split_file(tmp_path)) as index:
        assert len(pickle.dumps(index.lookup)) < 300  # a path, not the annotations
        with mp.get_context("forkserver").Pool(1) as pool:
            assert pool.starmap(_of, [(index.lookup, 9), (index.lookup, 7)]) == [[1, 3], [2]]
        database = index.lookup.database
        assert database.is_file()
    assert not database.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "annotation file not found"),
        ("[1, 2]", "expected a JSON object at the top level"),
        ('{"images": [], "annotations": {"id": 1}, "categories": []}', "'annotations' is not a list"),
        ('{"images": [], "annotations": []}', r"missing required key\(s\) \['categories'\]"),
        (
            '{"images": [], "annotations": [{"id": 4, "image_id": "7"}], "categories": []}',
            "annotation 4 needs an integer",
        ),
        ('{"images": [], "annotations": [{"id": 4,,', "malformed JSON"),
    ],
)
def test_index_names_the_file_and_the_problem(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "instances.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CocoError, match=message) as caught, indexed(path):
        pass
    assert str(path) in str(caught.value)
