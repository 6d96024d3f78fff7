"""The RSNA categories from the finding facts (docs/categories.md)."""

from __future__ import annotations

import numpy as np
import pytest

from covidcxr.infer.categories import CANNOT_SEE, CATEGORIES, rsna_category
from covidcxr.infer.findings import FACTS


def facts(**values: float) -> dict[str, float]:
    return {name: 0.0 for name in FACTS} | values


TYPICAL = facts(lesion_share=0.2, bilateral=0.12, peripheral=0.7, lower_zone=0.55)


def test_no_opacity_is_negative_whatever_the_lesions():
    cat = rsna_category(TYPICAL, abnormal=False)
    assert cat["code"] == "negative" and cat["label"] == CATEGORIES["negative"]
    assert cat["cannot_see"] == CANNOT_SEE and "effusion" in cat["cannot_see"]


def test_bilateral_peripheral_lower_zone_opacity_is_typical():
    cat = rsna_category(TYPICAL, abnormal=True)
    assert cat["code"] == "typical"
    assert "70%" in cat["reasons"][0] and "55%" in cat["reasons"][0]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"bilateral": 0.01}, "unilateral"),
        ({"peripheral": 0.45}, "not peripheral-predominant"),
        ({"lower_zone": 0.2}, "not lower-zone predominant"),
    ],
)
def test_missing_one_typical_feature_is_indeterminate_and_says_which(change, words):
    cat = rsna_category({**TYPICAL, **change}, abnormal=True)
    assert cat["code"] == "indeterminate" and words in cat["reasons"][0]


def test_opacity_without_an_outlined_lesion_is_indeterminate():
    cat = rsna_category(facts(lesion_share=0.001, geographic_extent=2.0), abnormal=True)
    assert cat["code"] == "indeterminate" and "no lesion" in cat["reasons"][0]


def test_unilateral_consolidation_is_atypical_but_not_with_much_ground_glass_or_a_second_lung():
    lobar = facts(lesion_share=0.08, bilateral=0.0, peripheral=0.5, lower_zone=0.6, **{"consolidation_left_lung": 0.2})
    cat = rsna_category(lobar, abnormal=True)
    assert cat["code"] == "atypical" and "left lung" in cat["reasons"][0]
    assert rsna_category({**lobar, "ground-glass_left_lung": 0.3}, abnormal=True)["code"] == "indeterminate"
    assert rsna_category({**lobar, "ground-glass_right_lung": 0.05}, abnormal=True)["code"] == "indeterminate"


def test_an_array_in_facts_order_reads_the_same_and_a_wrong_length_is_refused():
    array = np.array([TYPICAL[name] for name in FACTS], np.float32)
    assert rsna_category(array, abnormal=True)["code"] == "typical"
    with pytest.raises(ValueError, match="finding facts"):
        rsna_category(array[:-1], abnormal=True)
