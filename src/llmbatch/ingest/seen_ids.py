"""The duplicate-id table: which ids a file already accepted, and on which line, in flat memory."""

from __future__ import annotations

from array import array

__all__ = ["SeenIds"]


class SeenIds:
    """Which ids were accepted, and on which line: an open-addressing table of 64-bit digests.

    Two flat arrays (12 bytes a slot, half full at most) instead of a set of Python ints (~75 bytes
    an id). Digests are the per-process string hash; a false "duplicate" needs a 64-bit collision,
    about 3e-8 for a file of a million ids.
    """

    __slots__ = ("_count", "_digests", "_lines", "_mask")

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._digests = array("Q", bytes(8 * capacity))  # 0 marks an empty slot
        self._lines = array("I", bytes(4 * capacity))
        self._mask = capacity - 1
        self._count = 0

    def first_line(self, task_id: str, line_no: int) -> int | None:
        """The line where task_id was first seen, or None (and remember it as seen on line_no)."""
        digest = (hash(task_id) & 0xFFFF_FFFF_FFFF_FFFF) or 1
        digests, mask = self._digests, self._mask
        i = digest & mask
        while True:
            d = digests[i]
            if d == 0:
                digests[i] = digest
                self._lines[i] = line_no
                self._count += 1
                if self._count * 2 > mask:
                    self._grow()
                return None
            if d == digest:
                return self._lines[i]
            i = (i + 1) & mask

    def _grow(self) -> None:
        old_digests, old_lines = self._digests, self._lines
        capacity = (self._mask + 1) * 2
        digests, lines = array("Q", bytes(8 * capacity)), array("I", bytes(4 * capacity))
        mask = capacity - 1
        for d, n in zip(old_digests, old_lines):
            if d:
                i = d & mask
                while digests[i]:
                    i = (i + 1) & mask
                digests[i], lines[i] = d, n
        self._digests, self._lines, self._mask = digests, lines, mask

    @property
    def nbytes(self) -> int:
        return self._digests.itemsize * len(self._digests) + self._lines.itemsize * len(self._lines)
