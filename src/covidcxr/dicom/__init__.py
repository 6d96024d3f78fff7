"""DICOM in and out: results as SEG, SR and secondary capture (:mod:`.outputs`), and a DICOM node (:mod:`.node`).

Needs the ``dicom`` extra (highdicom, pynetdicom): ``pip install 'covidcxr[dicom]'``. Research use,
not for clinical decisions: every object written says so in its series description.
"""

from __future__ import annotations
