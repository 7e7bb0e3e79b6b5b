"""Face-only blur on coco-mini images with faces: only the faces inside persons change, and coverage counts the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anonbench import faces
from anonbench.anonymizers import plugins
from anonbench.anonymizers.face import BLUR_FACE, BlurFace
from anonbench.anonymizers.masks import Person, changed_pixels, person_masks
from anonbench.config import Config, load_config
from anonbench.images import read_image
from anonbench.stages import anonymize
from tests.conftest import PARAMS, coco_slice

VAL = "val2017"
# Images where dlib's HOG detector at upsample 2 (the methods' default) finds six faces inside persons and,
# in 000000386912, one more outside every person; and an image without a person.
FACES = ["000000085329.jpg", "000000233771.jpg", "000000329323.jpg", "000000386912.jpg"]
NO_PERSON = ["000000006818.jpg"]


@pytest.fixture(scope="module")
def cfg(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The slice's ``blur_face`` variant, made once by the anonymize stage."""
    source = coco_slice(coco_mini, tmp_path_factory.mktemp("face-coco"), {VAL: FACES + NO_PERSON})
    data = tmp_path_factory.mktemp("face-blurred")
    config = load_config(PARAMS, None, [f"paths.data={data}", f"tracking.uri=sqlite:///{data}/mlflow.db", "workers=1"])
    config.source_root.parent.mkdir(parents=True)
    config.source_root.symlink_to(source, target_is_directory=True)
    anonymize.run(config, "blur_face", splits=[VAL])
    return config


def holds(person: Person, box: faces.Box) -> bool:
    """Whether the centre of a face's box lies in the person's dilated mask (the test's own rule of ownership)."""
    x, y = int(box[0] + box[2] / 2), int(box[1] + box[3] / 2)
    x0, y0, x1, y1 = person.box
    return x0 <= x < x1 and y0 <= y < y1 and bool(person.mask[y - y0, x - x0])


def test_only_the_faces_inside_persons_change_and_coverage_counts_persons_without_one(cfg: Config) -> None:
    instances = json.loads(cfg.annotation_file("org", VAL).read_text())
    variant = cfg.variant_root("blur_face")
    dilation = cfg.anonymize.dilation_px
    held_faces = outside_faces = without_face = 0
    for info in instances["images"]:
        original = read_image(cfg.image_dir("org", VAL) / info["file_name"])
        blurred = read_image(cfg.image_dir("blur_face", VAL) / f"{Path(info['file_name']).stem}.png")
        changed = changed_pixels(original, blurred)
        annotations = [a for a in instances["annotations"] if a["image_id"] == info["id"]]
        persons = person_masks(annotations, 1, info["height"], info["width"], dilation, cfg.anonymize.min_person_px)
        grown = np.zeros(changed.shape, dtype=bool)
        owners = set()
        for box in faces.detect(original, "hog", 2) if persons.persons else []:
            x, y, w, h = (int(v) for v in box)
            inside = [i for i, person in enumerate(persons.persons) if holds(person, box)]
            if inside:
                held_faces += 1
                owners.update(inside)
                grown[max(y - dilation, 0) : y + h + dilation, max(x - dilation, 0) : x + w + dilation] = True
                # Every detected face of a person is blurred: nearly all its pixels change.
                assert changed[y : y + h, x : x + w].mean() > 0.9, (info["file_name"], box)
            else:
                outside_faces += 1
                assert not changed[y : y + h, x : x + w].any(), (info["file_name"], box)
        without_face += len(persons.persons) - len(owners)
        # Nothing outside the detected faces' boxes, grown by the dilation, changes; the region is theirs too.
        assert not (changed & ~grown).any(), info["file_name"]
        region = variant / "masks" / VAL / f"{Path(info['file_name']).stem}.png"
        painted = read_image(region)[..., 0] > 0 if region.exists() else np.zeros_like(grown)
        assert not (painted & ~grown).any() and (changed <= painted).all()
    assert (held_faces, outside_faces, without_face) == (6, 1, 20)

    coverage = json.loads((variant / f"coverage_{VAL}.json").read_text())
    assert coverage["faces_anonymized"] == held_faces and coverage["persons_without_face"] == without_face
    assert coverage["persons_anonymized"] == 26 and coverage["images"] == 5
    records = json.loads((variant / f"manifest_{VAL}.json").read_text())["records"]
    by_image = {r["key"]: r["details"]["persons_without_face"] for r in records}
    assert by_image == {"000000085329.jpg": 0, "000000233771.jpg": 8, "000000329323.jpg": 12, "000000386912.jpg": 0,
                        "000000006818.jpg": 0}  # fmt: skip


def test_declared_counts_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method must report exactly the counts it declares, as ints; anonbench's own count names are taken."""
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    silent = plugins.Anonymizer("silent", lambda im, p, s, r: plugins.Painted(im.copy(), np.zeros((4, 4), bool)),
                                BlurFace, counts=("faces_anonymized",))  # fmt: skip
    with pytest.raises(plugins.PluginError, match=r"counts \{\}, expected ints for \['faces_anonymized'\]"):
        silent(image, [], BlurFace(), rng)
    assert BLUR_FACE(image, [], BlurFace(), rng).counts == {"faces_anonymized": 0, "persons_without_face": 0}
    taken = plugins.Anonymizer("taken", BLUR_FACE.anonymize, BlurFace, counts=("persons_gt",))
    monkeypatch.setitem(plugins.installed(), "taken", taken)
    with pytest.raises(plugins.PluginError, match=r"counts \['persons_gt'\] are anonbench's own"):
        anonymize.method_counts(load_config(PARAMS), "taken")
    assert anonymize.method_counts(load_config(PARAMS), "blur_face") == ("faces_anonymized", "persons_without_face")
