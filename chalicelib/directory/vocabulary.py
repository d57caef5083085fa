"""The closed vocabulary of the directory: hospital grades (医院等级).

Kept apart from ``hospitals`` so request schemas can name it without importing the
domain module at cold start.

Example
-------
>>> GRADES[0]
'三级甲等'
"""

from __future__ import annotations

from typing import Literal, get_args

Grade = Literal["三级甲等", "三级乙等", "三级", "二级甲等", "二级乙等", "二级", "一级"]
GRADES: tuple[str, ...] = get_args(Grade)
