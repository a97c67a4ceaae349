"""Physical lines of a text file, read in large blocks and handed out in runs.

A :class:`LineRun` is ``count`` consecutive physical lines held as one bytes
object (joined by ``\\n``, no trailing newline), plus the 1-based number of its
first line. Keeping lines together lets fast parsers (pyarrow, Polars) take a
whole run at once; single lines are only cut out when needed (a raw for a dead
letter, the slow path). Line ends are ``\\n``; a ``\\r`` before it is dropped
from raws. A final line without a newline still counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

BLOCK_BYTES = 8 << 20
_BOM = b"\xef\xbb\xbf"
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 13, 32]] = True


@dataclass
class LineRun:
    """``count`` physical lines starting at line ``first_line`` (1-based)."""

    data: bytes
    first_line: int
    count: int
    _bounds: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends): byte offsets of each line in ``data``, ends before ``\\r\\n``."""
        if self._bounds is None:
            buf = np.frombuffer(self.data, dtype=np.uint8)
            nl = np.flatnonzero(buf == 10)
            starts = np.concatenate(([0], nl + 1)).astype(np.int64)
            ends = np.concatenate((nl, [len(self.data)])).astype(np.int64)
            cr = (
                (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
                if len(buf)
                else ends > starts
            )
            ends = ends - cr.astype(np.int64)
            self._bounds = (starts, ends)
        return self._bounds

    def blank(self) -> np.ndarray:
        """Boolean mask: the line holds nothing but spaces, tabs and ``\\r``."""
        starts, ends = self.bounds()
        empty = ends <= starts
        if not self.data:
            return empty
        buf = np.frombuffer(self.data, dtype=np.uint8)
        first = buf[np.minimum(starts, len(buf) - 1)]
        out = empty.copy()
        for i in np.flatnonzero(~empty & _SPACE[first]).tolist():  # rare: a leading space
            out[i] = not self.data[starts[i] : ends[i]].strip(b" \t\r")
        return out

    def line(self, i: int) -> bytes:
        """Line ``i`` (0-based within the run) without its line end."""
        starts, ends = self.bounds()
        return self.data[starts[i] : ends[i]]

    def lines(self) -> list[bytes]:
        """Every line of the run, without line ends."""
        return [line.removesuffix(b"\r") for line in self.data.split(b"\n")]


class LineSource:
    """Hands out runs of physical lines from a binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._chunks: list[tuple[bytes, int]] = []  # unread blocks and their newline counts
        self._offset = 0  # bytes of the first block already handed out
        self._newlines = 0  # newlines in the unread blocks
        self._eof = False
        self._started = False
        self.lines_read = 0  # physical lines handed out so far

    def _fill(self) -> None:
        chunk = self._stream.read(BLOCK_BYTES)
        if not self._started:
            self._started = True
            chunk = chunk.removeprefix(_BOM)
        if not chunk:
            self._eof = True
            return
        found = chunk.count(b"\n")
        self._chunks.append((chunk, found))
        self._newlines += found

    def take(self, count: int) -> LineRun | None:
        """The next ``count`` lines (fewer at the end of the file); None when none are left."""
        while self._newlines < count and not self._eof:
            self._fill()
        if not self._chunks:
            return None
        if self._newlines >= count:
            data = self._cut(count)
            n = count
        else:  # end of file: everything left; the last line may lack its newline
            data = b"".join(self._unread(len(self._chunks)))
            self._chunks, self._offset, self._newlines = [], 0, 0
            n = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            data = data.removesuffix(b"\n")
        run = LineRun(data, self.lines_read + 1, n)
        self.lines_read += n
        return run

    def _unread(self, blocks: int) -> list[bytes]:
        """The first ``blocks`` unread blocks, the first without what was handed out."""
        out = [c for c, _ in self._chunks[:blocks]]
        if out and self._offset:
            out[0] = out[0][self._offset :]
        return out

    def _cut(self, count: int) -> bytes:
        """The unread data up to (not including) the ``count``-th newline; the rest stays.

        The rest of the block stays where it is (an offset, not a copy): cutting
        one line at a time, as the CSV reader does to finish a quoted cell, must
        not copy the whole block each time.
        """
        need, used = count, 0
        while self._chunks[used][1] < need:  # find the block holding the count-th newline
            need -= self._chunks[used][1]
            used += 1
        chunk, found = self._chunks[used]
        start = self._offset if used == 0 else 0
        at = _nth_newline(chunk, need, start)
        data = b"".join([*self._unread(used), chunk[start:at]])
        if at + 1 < len(chunk):
            self._chunks = [(chunk, found - need), *self._chunks[used + 1 :]]
            self._offset = at + 1
        else:
            self._chunks, self._offset = self._chunks[used + 1 :], 0
        self._newlines -= count
        return data

    def skip(self, count: int) -> int:
        """Drop ``count`` lines; returns how many there were."""
        done = 0
        while done < count:
            run = self.take(min(count - done, 1 << 20))
            if run is None:
                break
            done += run.count
        return done


def _nth_newline(buf: bytes, n: int, start: int = 0) -> int:
    """Offset of the n-th (1-based) newline in ``buf`` from ``start``; ``buf`` holds n of them.

    Looks no further than it must (a window doubling from ``64 * n`` bytes), so the
    cost follows the bytes handed out, not the size of the block.
    """
    if n <= 64:
        pos = start - 1
        for _ in range(n):
            pos = buf.index(b"\n", pos + 1)
        return pos
    window = 64 * n
    while True:
        end = min(len(buf), start + window)
        view = np.frombuffer(buf, dtype=np.uint8, count=end - start, offset=start)
        hits = np.flatnonzero(view == 10)
        if len(hits) >= n or end == len(buf):
            return start + int(hits[n - 1])
        window *= 2
