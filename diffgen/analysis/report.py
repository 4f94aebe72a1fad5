"""The report of --mode=analyze: report/report.json, report/report.md and one PNG per figure.

Each experiment returns a Section; write_report assembles them in order. Every table of the
report is made by markdown_table, every number in its text by number. Beside report.json,
sections.json keeps each section's title, text, figure names and summary (a sentence or two
for README.md; '' when the experiment sets none, or in a sections.json older than it), so
that finished_sections can give back the sections a rerun keeps (those made from the same
checkpoint, config and training set: their numbers['provenance']).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from diffgen import files
from diffgen.analysis.provenance import matched

FIGURE_DATA = '_'   # numbers keys starting with this hold what only the figures need


@dataclasses.dataclass
class Section:
    """One experiment's part of the report."""
    key: str                    # 'e1', ...: its key in report.json
    title: str                  # heading in report.md
    markdown: str               # text and tables (Markdown), without the heading
    numbers: dict[str, Any]     # the measurements; report.json[key] = reported(numbers)
    figures: list[str] = dataclasses.field(default_factory=list)  # PNGs in the report dir
    summary: str = ''           # one or two sentences of the finding, for README.md's block


def report_dir(workdir):
    return os.path.join(workdir, 'report')


def reported(numbers):
    """The numbers report.json stores: all but the top-level keys starting with FIGURE_DATA,
    which hold per-sample arrays (samples, distances) that only the figures are drawn from."""
    return {k: v for k, v in numbers.items() if not str(k).startswith(FIGURE_DATA)}


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


def number(value, spec='.3f'):
    """A number as a table cell or in text: format(value, spec); '–' for a missing (None) or
    NaN value, '∞' / '−∞' for infinities (also given as the strings report.json stores)."""
    if value is None:
        return '–'
    value = float(value)
    if math.isnan(value):
        return '–'
    if math.isinf(value):
        return '∞' if value > 0 else '−∞'
    return format(value, spec)


def markdown_table(header, rows):
    """A Markdown table: header = column headings, rows = lists of cells (strings, or values
    shown with str). The first column (the row labels) is left-aligned, the others right."""
    cells = lambda row: '| ' + ' | '.join(str(c) for c in row) + ' |'
    rule = '| --- |' + ' ---: |' * (len(header) - 1)
    return '\n'.join([cells(header), rule, *(cells(r) for r in rows)])


_REMEDY = 'delete it: the next --mode=analyze (or compare) computes every section again'


def _read(path):
    """A JSON file of the report dir ({} if there is none; CorruptFileError if damaged)."""
    return files.read_json(path, remedy=_REMEDY) if files.exists(path) else {}


def write_report(sections, directory, title, preamble=''):
    """Writes report.json ({key: reported numbers}), sections.json ({key: title, markdown,
    figures, summary}) and report.md (sections with their figures). Existing sections of
    report.json and sections.json that this call does not rewrite are kept if they were made
    with the provenance (numbers['provenance']: checkpoint step, config digest, training-set
    fingerprint) of a section it writes, and dropped otherwise: a section of another
    checkpoint, config or training set is never merged into the report. report.md shows this
    call's sections in order, then the kept ones."""
    json_path = os.path.join(directory, 'report.json')
    written = {s.key: _jsonable(reported(s.numbers)) for s in sections}
    current = [matched(n.get('provenance')) for n in written.values()]
    numbers = {k: n for k, n in _read(json_path).items()
               if isinstance(n, dict) and matched(n.get('provenance')) in current}
    numbers.update(written)
    files.write_text(json_path, json.dumps(numbers, indent=2))
    texts_path = os.path.join(directory, 'sections.json')
    texts = {k: t for k, t in _read(texts_path).items() if k in numbers}
    texts.update({s.key: {'title': s.title, 'markdown': s.markdown, 'figures': s.figures,
                          'summary': s.summary} for s in sections})
    files.write_text(texts_path, json.dumps(texts, indent=2))
    parts = [f'# {title}\n', preamble.strip() + '\n' if preamble else '']
    kept = [texts[k] | {'key': k} for k in texts if k not in written]   # after this call's
    for s in [{'key': s.key, 'title': s.title, 'markdown': s.markdown, 'figures': s.figures}
              for s in sections] + kept:
        parts.append(f'## {s["title"]}\n\n{s["markdown"].strip()}\n')
        parts.extend(f'![{s["key"]}: {name}]({name})\n' for name in s['figures'])
    files.write_text(os.path.join(directory, 'report.md'), '\n'.join(p for p in parts if p))
    return json_path


def finished_sections(directory, keys, provenance):
    """{key: Section} of the sections of keys already in directory's report (report.json
    and sections.json) that were made with this provenance (numbers['provenance']: step,
    config digest, training-set fingerprint) and whose figures exist: a rerun keeps them."""
    numbers = _read(os.path.join(directory, 'report.json'))
    texts = _read(os.path.join(directory, 'sections.json'))
    kept = {}
    for key in keys:
        n, t = numbers.get(key), texts.get(key)
        if (isinstance(n, dict) and isinstance(t, dict)
                and matched(n.get('provenance')) == matched(provenance)
                and {'title', 'markdown', 'figures'} <= set(t)
                and all(files.exists(os.path.join(directory, f)) for f in t['figures'])):
            kept[key] = Section(key, t['title'], t['markdown'], n, list(t['figures']),
                                t.get('summary', ''))   # older sections.json: no summary
    return kept
