"""The report of --mode=analyze: report/report.json, report/report.md and one PNG per figure.

Each experiment returns a Section; write_report assembles them in order.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from diffgen import files


@dataclasses.dataclass
class Section:
    """One experiment's part of the report."""
    key: str                    # 'e1', ...: its key in report.json
    title: str                  # heading in report.md
    markdown: str               # text and tables (Markdown), without the heading
    numbers: dict[str, Any]     # JSON-able results, stored under report.json[key]
    figures: list[str] = dataclasses.field(default_factory=list)  # PNGs in the report dir


def report_dir(workdir):
    return os.path.join(workdir, 'report')


def _jsonable(value):
    if hasattr(value, 'tolist'):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None  # NaN -> null
    return value


def write_report(sections, directory, title, preamble=''):
    """Writes report.json ({key: numbers}) and report.md (sections with their figures).
    Existing sections of report.json that this call does not rewrite are kept."""
    json_path = os.path.join(directory, 'report.json')
    numbers = json.loads(files.read_text(json_path)) if files.exists(json_path) else {}
    numbers.update({s.key: _jsonable(s.numbers) for s in sections})
    files.write_text(json_path, json.dumps(numbers, indent=2))
    parts = [f'# {title}\n', preamble.strip() + '\n' if preamble else '']
    for s in sections:
        parts.append(f'## {s.title}\n\n{s.markdown.strip()}\n')
        parts.extend(f'![{s.key}: {name}]({name})\n' for name in s.figures)
    files.write_text(os.path.join(directory, 'report.md'), '\n'.join(p for p in parts if p))
    return json_path
