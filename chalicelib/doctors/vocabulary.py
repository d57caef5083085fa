"""The closed vocabularies of a doctor's profile, with the labels front ends show.

Example
-------
>>> TITLES["attending"]["zh"]
'主治医师'
"""

from __future__ import annotations

from typing import Literal

Title = Literal["resident", "attending", "associate_chief", "chief"]
Specialty = Literal[
    "cardiac", "thoracic", "paediatric", "obstetric", "neuro", "regional", "pain", "ambulatory", "critical_care"
]

TITLES: dict[str, dict[str, str]] = {
    "resident": {"zh": "住院医师", "en": "Resident"},
    "attending": {"zh": "主治医师", "en": "Attending physician"},
    "associate_chief": {"zh": "副主任医师", "en": "Associate chief physician"},
    "chief": {"zh": "主任医师", "en": "Chief physician"},
}

SPECIALTIES: dict[str, dict[str, str]] = {
    "cardiac": {"zh": "心脏麻醉", "en": "Cardiac anesthesia"},
    "thoracic": {"zh": "胸科麻醉", "en": "Thoracic anesthesia"},
    "paediatric": {"zh": "小儿麻醉", "en": "Paediatric anesthesia"},
    "obstetric": {"zh": "产科麻醉", "en": "Obstetric anesthesia"},
    "neuro": {"zh": "神经外科麻醉", "en": "Neuro-anesthesia"},
    "regional": {"zh": "区域阻滞", "en": "Regional anesthesia"},
    "pain": {"zh": "疼痛治疗", "en": "Pain medicine"},
    "ambulatory": {"zh": "日间手术麻醉", "en": "Ambulatory anesthesia"},
    "critical_care": {"zh": "重症医学", "en": "Critical care"},
}
