"""A CSV of numbers per training step (eval.csv): one row per step, rewritten whole and
atomically at every append (it is small), so that a crash never leaves half a row. A run
resumed from step S drops the rows after S: it recomputes them, as the run it continues
would have. CsvWriter is the same file as a clu MetricWriter, beside TensorBoard's."""
from __future__ import annotations

import csv
import io

from clu.metric_writers import interface

from diffgen import files
from diffgen.errors import CorruptFileError


class CsvLog:
    def __init__(self, path, *, resume_step):
        """Opens path (keeping the rows with step <= resume_step, if it exists);
        CorruptFileError if it is not such a CSV (damaged)."""
        self.path = path
        self.rows = [r for r in read_csv(path) if _step(r, path) <= resume_step] \
            if files.exists(path) else []

    def append(self, step, numbers):
        """Adds the row {step, **numbers} and rewrites the file."""
        self.rows.append({'step': step, **numbers})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval='')
        writer.writeheader()
        writer.writerows(self.rows)
        files.write_text(self.path, buffer.getvalue())


class CsvWriter(interface.MetricWriter):
    """A clu MetricWriter that writes the scalars whose tag starts with prefix ('eval/') as
    one CsvLog row per write_scalars call, the prefix cut off (eval/ddim/fd -> ddim/fd);
    every other kind of value, and other tags, it leaves to the writers beside it."""

    def __init__(self, path, *, resume_step, prefix='eval/'):
        self.log, self.prefix = CsvLog(path, resume_step=resume_step), prefix

    def write_scalars(self, step, scalars):
        row = {k[len(self.prefix):]: float(v) for k, v in scalars.items()
               if k.startswith(self.prefix)}
        if row:
            self.log.append(int(step), row)

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def read_csv(path):
    """The rows of a CSV file as dicts of strings."""
    try:
        return list(csv.DictReader(io.StringIO(files.read_text(path))))
    except (csv.Error, UnicodeDecodeError) as e:
        raise _damaged(path, e) from e


def _step(row, path):
    try:
        return int(row['step'])
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(path, f'a row whose step is {row.get("step")!r}') from e


def _damaged(path, why):
    return CorruptFileError(f'{path} is damaged ({why}); delete it to start it anew (the '
                            'evaluations it held are not redone)')
