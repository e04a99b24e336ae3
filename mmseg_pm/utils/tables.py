"""The one table renderer of the demo, the study and the benchmark: cells
(strings) under a head, as plain text or markdown."""
from __future__ import annotations

from typing import Collection, Sequence


def text_table(head: Sequence[str], lines: Sequence[Sequence[str]],
               right: Collection[int] = ()) -> str:
    """Columns as wide as their widest cell, two spaces apart, a dashed
    rule under the head; the columns numbered in ``right`` right-aligned,
    the others left-aligned (and padded, the last one too)."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]

    def line(cells):
        return '  '.join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return '\n'.join([line(head), '  '.join('-' * w for w in widths)] +
                     [line(cells) for cells in lines])


def markdown_table(head: Sequence[str], lines: Sequence[Sequence[str]],
                   right: Collection[int] = ()) -> str:
    """A markdown table (no trailing newline); the columns numbered in
    ``right`` right-aligned."""
    rule = '|' + '|'.join('---:' if i in right else '---'
                          for i in range(len(head))) + '|'
    return '\n'.join(['| ' + ' | '.join(head) + ' |', rule] +
                     ['| ' + ' | '.join(map(str, cells)) + ' |'
                      for cells in lines])
