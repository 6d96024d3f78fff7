from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from covidcxr.data import hannover, ieee8023, kermany, load_records, nih, radiography
from covidcxr.data.labels import label_of
from covidcxr.data.masks import IGNORE, LUNG, read_mask
from covidcxr.data.splits import SPLIT_DIR, SPLIT_FILE, assign_split, split_of, write_split_file

SIX_FOLDERS = {
    "covid-chestxray",
    "nih-chestxray8",
    "kermany-pediatric",
    "hannover",
    "nih-chestxray14",
    "covid19-radiography",
}


def _split_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_split_file_has_no_patient_in_two_splits_over_all_six_folders():
    splits = defaultdict(set)
    rows = _split_rows(SPLIT_FILE)
    assert {r["dataset"] for r in rows} == SIX_FOLDERS and len(rows) > 6000
    for r in rows:
        splits[r["patient_id"]].add(r["split"])
    leaks = {p: s for p, s in splits.items() if len(s) > 1}
    assert not leaks


def test_split_v2_keeps_every_v1_image_in_its_split():
    v1 = {(r["dataset"], r["filename"]): r["split"] for r in _split_rows(SPLIT_DIR / "v1.csv")}
    v2 = {(r["dataset"], r["filename"]): r for r in _split_rows(SPLIT_FILE)}
    assert len(v1) > 2600 and set(v1) <= set(v2)
    assert all(v2[k]["split"] == s for k, s in v1.items())
    # A patient new in v2 follows the hash rule.
    v1_patients = {v2[k]["patient_id"] for k in v1}
    new = [r for r in v2.values() if r["patient_id"] not in v1_patients]
    assert len(new) > 3000 and all(r["split"] == assign_split(r["patient_id"]) for r in new)


def test_split_file_is_what_the_writer_gives(records, tmp_path):
    out = write_split_file(records, tmp_path / "v2.csv", previous=SPLIT_DIR / "v1.csv")
    assert out.read_text() == SPLIT_FILE.read_text()


def test_cross_folder_patients_share_a_split(records):
    by_key = {(r["dataset"], r["filename"]): r for r in records}
    linked = [r for r in records if r["dataset"] == "hannover" and r["patient_id"].startswith("covid-chestxray:")]
    assert len(linked) == 77
    ieee_split = {r["patient_id"]: r["split"] for r in records if r["dataset"] == "covid-chestxray"}
    assert all(ieee_split[r["patient_id"]] == r["split"] for r in linked if r["patient_id"] in ieee_split)
    nih8 = {r["patient_id"]: r["split"] for r in records if r["dataset"] == "nih-chestxray8"}
    shared = [r for r in records if r["dataset"] == "nih-chestxray14" and r["patient_id"] in nih8]
    assert shared and all(nih8[r["patient_id"]] == r["split"] for r in shared)
    dup = by_key[("covid19-radiography", "Normal-2467.jpg")]
    assert (
        dup["patient_id"] == "nih:00001568" and dup["split"] == by_key[("nih-chestxray8", "00001568_004.png")]["split"]
    )


def test_hospital_source_readers_and_labels(data_root):
    han = hannover.load_records(data_root / "hannover")
    assert len(han) == 161 and {r["modality"] for r in han} == {"X-ray"} and {r["view"] for r in han} == {"AP", "PA"}
    n14 = nih.load_records_14(data_root / "nih-chestxray14")
    assert len(n14) == 881 and all(r["patient_id"].startswith("nih:") for r in n14)
    rad = radiography.load_records(data_root / "covid19-radiography")
    assert len(rad) == 2731 and sum(r["finding"] == "COVID-19" for r in rad) == 1731
    assert {label_of(r["dataset"], r["finding"]) for r in han} == {"COVID-19"}
    assert {r["finding"]: label_of(r["dataset"], r["finding"]) for r in n14} == {
        "Consolidation": "Other pneumonia",
        "Pneumonia": "Other pneumonia",
        "No Finding": "No finding",
    }
    assert {label_of(r["dataset"], r["finding"]) for r in rad} == {"COVID-19", "No finding"}
    with pytest.raises(FileNotFoundError, match="hannover/labels.csv"):
        hannover.load_records(data_root / "no-such-folder")


def test_load_records_can_pick_folders(data_root):
    recs = load_records(data_root, datasets=("hannover",))
    assert {r["dataset"] for r in recs} == {"hannover"} and all(r["split"] in ("train", "val", "test") for r in recs)


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
    assert by["hannover"] == 161 and by["nih-chestxray14"] == 881 and by["covid19-radiography"] == 2731
    # 199 lungVAE files, of which 4 are upstream duplicates named "<stem>_mask.png.png": 195 images.
    assert (
        by["v7labs"] == 510 and by["generalblockchain"] == 92 and by["kermany-v7labs"] == 724 and by["lungvae"] == 195
    )


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
