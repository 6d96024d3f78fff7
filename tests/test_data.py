from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from covidcxr.data import ieee8023, kermany
from covidcxr.data.masks import IGNORE, LUNG, read_mask
from covidcxr.data.splits import SPLIT_FILE, assign_split, split_of


def test_split_file_has_no_patient_in_two_splits():
    splits = defaultdict(set)
    with open(SPLIT_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 2000
    for r in rows:
        splits[r["patient_id"]].add(r["split"])
        assert r["split"] == assign_split(r["patient_id"])
    leaks = {p: s for p, s in splits.items() if len(s) > 1}
    assert not leaks


def test_every_record_is_in_the_split_file_and_patients_do_not_leak(records):
    with open(SPLIT_FILE, newline="") as fh:
        table = {(r["dataset"], r["filename"]): r["split"] for r in csv.DictReader(fh)}
    by_patient = defaultdict(set)
    for rec in records:
        assert table[(rec["dataset"], rec["filename"])] == rec["split"]
        by_patient[rec["patient_id"]].add(rec["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {s: sum(r["split"] == s for r in records) for s in ("train", "val", "test")}
    assert 0.6 < counts["train"] / len(records) < 0.8
    assert counts["val"] > 200 and counts["test"] > 200


def test_split_of_unknown_image_follows_its_patient():
    rec = {"dataset": "covid-chestxray", "filename": "not-in-the-file.png", "patient_id": "covid-chestxray:2"}
    assert split_of(rec) == assign_split("covid-chestxray:2")


def test_every_mask_has_its_images_size(records):
    n = 0
    for rec in records:
        if not rec["masks"]:
            continue
        with Image.open(rec["path"]) as im:
            size = im.size
        for source, ref in rec["masks"].items():
            with Image.open(ref) as m:
                assert m.size == size, (rec["path"], source)
            n += 1
    assert n > 1400


def test_dataset_counts(records):
    by = defaultdict(int)
    for r in records:
        by[r["dataset"]] += 1
        for s in r["masks"]:
            by[s] += 1
    assert by["covid-chestxray"] == 711 and by["nih-chestxray8"] == 1000 and by["kermany-pediatric"] == 960
    # 199 lungVAE files, of which 4 are upstream duplicates named "<stem>_mask.png.png": 195 images.
    assert by["v7labs"] == 510 and by["generalblockchain"] == 92 and by["kermany-v7labs"] == 724 and by["lungvae"] == 195


def test_v7labs_mask_values_map_to_lung_and_ignore(tmp_path):
    arr = np.zeros((40, 40), np.uint8)
    arr[5:20, 5:20] = 255
    arr[10:12, 10:12] = 127
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = read_mask(str(tmp_path / "m.png"), "v7labs")
    assert set(np.unique(m)) == {0, LUNG, IGNORE}
    assert (m == IGNORE).sum() == 4 and (m == LUNG).sum() == 15 * 15 - 4
    with pytest.raises(ValueError, match="unknown mask source"):
        read_mask(str(tmp_path / "m.png"), "nope")


def test_kermany_normal_images_group_by_name():
    assert kermany._patient_id("IM-0115-0001.jpeg", "") == kermany._patient_id("IM-0115-0002.jpeg", "")
    assert kermany._patient_id("NORMAL2-IM-1427-0001.jpeg", "") == "kermany-pediatric:NORMAL2-IM-1427"
    assert kermany._patient_id("person1_bacteria_1.jpeg", "person1") == "kermany-pediatric:person1"


def test_upstream_layout_without_annotations(tmp_path, fixtures, monkeypatch):
    """A user's own upstream clone: metadata.csv + images/, masks from torchxrayvision's zip if installed."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes((fixtures / "ieee8023_2cd63b76.jpg").read_bytes())
    with open(tmp_path / "metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientid", "finding", "view", "modality", "folder", "filename"])
        w.writerow(["7", "COVID-19", "PA", "X-ray", "images", "a.jpg"])
        w.writerow(["7", "COVID-19", "PA", "X-ray", "images", "missing.jpg"])
    monkeypatch.setattr(ieee8023, "_torchxrayvision_v7labs_zip", lambda: None)
    recs = ieee8023.load_records(tmp_path)
    assert len(recs) == 1 and recs[0]["patient_id"] == "covid-chestxray:7" and recs[0]["masks"] == {}


def test_torchxrayvision_bundled_masks_are_found():
    archive = ieee8023._torchxrayvision_v7labs_zip()
    assert archive is not None and archive.is_file()
    masks = ieee8023._v7labs_masks(archive.parent / "no-such-clone")
    assert len(masks) > 400
    name, ref = next(iter(masks.items()))
    m = read_mask(ref, "v7labs")
    assert m.ndim == 2 and (m == LUNG).any()
