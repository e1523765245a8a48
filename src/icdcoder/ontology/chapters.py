"""Chapter tables for the systems whose packages carry none: ICD-9-CM volumes 1 and 3, ICD-10-PCS sections.

Titles are written in the style simple_icd_10_cm uses for ICD-10-CM chapters ("title (range)").
"""

from __future__ import annotations

from bisect import bisect_right

from icdcoder.ontology.tree import Chapter

# (chapter id, first 3-digit category, title); V and E are the two supplementary classifications.
_ICD9_DX = [
    ("1", 1, "Infectious and parasitic diseases (001-139)"),
    ("2", 140, "Neoplasms (140-239)"),
    ("3", 240, "Endocrine, nutritional and metabolic diseases, and immunity disorders (240-279)"),
    ("4", 280, "Diseases of the blood and blood-forming organs (280-289)"),
    ("5", 290, "Mental disorders (290-319)"),
    ("6", 320, "Diseases of the nervous system and sense organs (320-389)"),
    ("7", 390, "Diseases of the circulatory system (390-459)"),
    ("8", 460, "Diseases of the respiratory system (460-519)"),
    ("9", 520, "Diseases of the digestive system (520-579)"),
    ("10", 580, "Diseases of the genitourinary system (580-629)"),
    ("11", 630, "Complications of pregnancy, childbirth, and the puerperium (630-679)"),
    ("12", 680, "Diseases of the skin and subcutaneous tissue (680-709)"),
    ("13", 710, "Diseases of the musculoskeletal system and connective tissue (710-739)"),
    ("14", 740, "Congenital anomalies (740-759)"),
    ("15", 760, "Certain conditions originating in the perinatal period (760-779)"),
    ("16", 780, "Symptoms, signs, and ill-defined conditions (780-799)"),
    ("17", 800, "Injury and poisoning (800-999)"),
]
_ICD9_DX_SUPPLEMENTARY = {
    "V": ("V", "Supplementary classification of factors influencing health status and contact "
               "with health services (V01-V91)"),
    "E": ("E", "Supplementary classification of external causes of injury and poisoning (E000-E999)"),
}

# ICD-9-CM volume 3: (chapter id, first 2-digit category, title). Chapters 0 and 3A were added late.
_ICD9_PROC = [
    ("0", 0, "Procedures and interventions, not elsewhere classified (00)"),
    ("1", 1, "Operations on the nervous system (01-05)"),
    ("2", 6, "Operations on the endocrine system (06-07)"),
    ("3", 8, "Operations on the eye (08-16)"),
    ("3A", 17, "Other miscellaneous diagnostic and therapeutic procedures (17)"),
    ("4", 18, "Operations on the ear (18-20)"),
    ("5", 21, "Operations on the nose, mouth, and pharynx (21-29)"),
    ("6", 30, "Operations on the respiratory system (30-34)"),
    ("7", 35, "Operations on the cardiovascular system (35-39)"),
    ("8", 40, "Operations on the hemic and lymphatic system (40-41)"),
    ("9", 42, "Operations on the digestive system (42-54)"),
    ("10", 55, "Operations on the urinary system (55-59)"),
    ("11", 60, "Operations on the male genital organs (60-64)"),
    ("12", 65, "Operations on the female genital organs (65-71)"),
    ("13", 72, "Obstetrical procedures (72-75)"),
    ("14", 76, "Operations on the musculoskeletal system (76-84)"),
    ("15", 85, "Operations on the integumentary system (85-86)"),
    ("16", 87, "Miscellaneous diagnostic and therapeutic procedures (87-99)"),
]

# ICD-10-PCS sections (first character).
_PCS_SECTIONS = {
    "0": "Medical and Surgical", "1": "Obstetrics", "2": "Placement", "3": "Administration",
    "4": "Measurement and Monitoring", "5": "Extracorporeal or Systemic Assistance and Performance",
    "6": "Extracorporeal or Systemic Therapies", "7": "Osteopathic", "8": "Other Procedures",
    "9": "Chiropractic", "B": "Imaging", "C": "Nuclear Medicine", "D": "Radiation Therapy",
    "F": "Physical Rehabilitation and Diagnostic Audiology", "G": "Mental Health",
    "H": "Substance Abuse Treatment", "X": "New Technology",
}


def _by_start(table: list[tuple[str, int, str]], number: int) -> Chapter:
    i = bisect_right([start for _, start, _ in table], number) - 1
    chapter_id, _, title = table[i]
    return chapter_id, title


def icd9_dx_chapter(code: str) -> Chapter | None:
    if code[0] in _ICD9_DX_SUPPLEMENTARY:
        return _ICD9_DX_SUPPLEMENTARY[code[0]]
    return _by_start(_ICD9_DX, int(code[:3])) if code[:3].isdigit() and code[:3] != "000" else None


def icd9_proc_chapter(code: str) -> Chapter | None:
    return _by_start(_ICD9_PROC, int(code[:2])) if code[:2].isdigit() else None


def pcs_section(code: str) -> Chapter | None:
    title = _PCS_SECTIONS.get(code[:1])
    return (code[0], title) if title else None
