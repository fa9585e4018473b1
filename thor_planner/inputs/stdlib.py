"""The running interpreter's standard-library source as a byte corpus for causal language models:
real text on every machine, nothing downloaded.

- **Files**: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` except those in a folder
  named ``site-packages``, ``dist-packages`` (installed packages, not the standard library),
  ``test`` or ``tests``, or whose name ends in ``_test`` or ``_tests`` (test suites:
  ``test/``, ``unittest/test/``, ``lib2to3/tests/``, ``idlelib/idle_test/``, ...). The rule looks at
  folder names only: modules such as ``unittest/case.py`` or ``doctest.py`` stay. Symlinked folders
  are not followed. Files are identified by their POSIX path relative to that root and read as
  bytes, in sorted path order.
- **Split**: by file, with a hash that does not depend on the process: a file is in the validation
  split when the first 8 bytes of ``sha256(relative path)``, read as a big-endian integer, are
  ``0 mod`` :data:`VALIDATION_BUCKETS` (10: about 10% of the files). No file is on both sides, and a
  file keeps its side when others are added or removed.
- **Streams**: each split's files concatenated in path order into one ``uint8`` tensor (no
  separator; files end with a newline). Windows of ``seq_len + 1`` consecutive bytes give inputs
  ``x`` (the first ``seq_len``) and next-byte labels ``y`` (the last ``seq_len``), both int64.
- **Identity**: :meth:`Corpus.describe` records the Python version, the root, the file and byte
  counts and a sha256 over every file's relative path, size and bytes in path order, so a result
  says exactly which text it was measured on.

Bits per byte (:func:`bits_per_byte`) is the mean next-byte cross-entropy in nats over ``ln 2``.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache

import torch

from thor_planner.utils.errors import UserError

#: A file is in the validation split when its path hash is 0 modulo this (about 1 in 10 files).
VALIDATION_BUCKETS = 10
#: Folders whose files are not part of the corpus (installed packages and test suites) ...
EXCLUDED_FOLDERS = frozenset({"site-packages", "dist-packages", "test", "tests"})
#: ... and folder-name endings that mark test suites (``idlelib/idle_test``).
EXCLUDED_FOLDER_SUFFIXES = ("_test", "_tests")
SPLIT_RULE = (f"validation when int.from_bytes(sha256(relative POSIX path)[:8], 'big') % "
              f"{VALIDATION_BUCKETS} == 0")
EXCLUSION_RULE = ("*.py under sysconfig stdlib, except in folders named site-packages, dist-packages, "
                  "test, tests or *_test, *_tests")


def stdlib_root() -> str:
    """The standard library folder of the running interpreter."""
    return sysconfig.get_paths()["stdlib"]


def excluded_folder(name: str) -> bool:
    """Whether files under a folder of this name are left out of the corpus."""
    return name in EXCLUDED_FOLDERS or name.endswith(EXCLUDED_FOLDER_SUFFIXES)


def corpus_files(root: str | None = None) -> list[str]:
    """The corpus's files: POSIX paths relative to ``root`` (default :func:`stdlib_root`), sorted."""
    root = stdlib_root() if root is None else root
    out = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not excluded_folder(d)]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out += [prefix + f for f in files if f.endswith(".py")]
    return sorted(out)


def is_validation(relative_path: str) -> bool:
    """Whether the file at this POSIX path (relative to the root) is in the validation split."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_BUCKETS == 0


@dataclass(frozen=True, eq=False)
class Corpus:
    """The split corpus. ``train`` and ``validation`` are the concatenated bytes of each split's
    files (``uint8``, shared by every caller of :func:`load_corpus`: treat them as read-only)."""

    root: str
    python_version: str
    train_files: tuple[str, ...]
    validation_files: tuple[str, ...]
    train: torch.Tensor
    validation: torch.Tensor
    sha256: str

    @property
    def total_bytes(self) -> int:
        return len(self.train) + len(self.validation)

    def describe(self) -> dict:
        """What the corpus is, as plain JSON-ready data to record beside results."""
        return {
            "name": "stdlib", "python": self.python_version, "root": self.root,
            "files": len(self.train_files) + len(self.validation_files),
            "train_files": len(self.train_files), "validation_files": len(self.validation_files),
            "train_bytes": len(self.train), "validation_bytes": len(self.validation),
            "total_bytes": self.total_bytes, "sha256": self.sha256,
            "files_rule": EXCLUSION_RULE, "split_rule": SPLIT_RULE,
        }


def _as_tensor(chunks: list[bytes]) -> torch.Tensor:
    joined = bytearray(b"".join(chunks))
    return torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)


def build_corpus(root: str | None = None) -> Corpus:
    """Read and split the corpus under ``root`` (default :func:`stdlib_root`); not cached."""
    root = stdlib_root() if root is None else root
    files = corpus_files(root)
    if not files:
        raise UserError(f"The 'stdlib' data needs the standard library's source files, and there are no *.py "
                        f"files under {root}: use a full Python install, or --data tokens")
    digest = hashlib.sha256()
    sides: dict[bool, tuple[list[str], list[bytes]]] = {False: ([], []), True: ([], [])}
    for rel in files:
        with open(os.path.join(root, *rel.split("/")), "rb") as fh:
            content = fh.read()
        digest.update(rel.encode("utf-8") + b"\0" + str(len(content)).encode() + b"\0" + content)
        names, chunks = sides[is_validation(rel)]
        names.append(rel)
        chunks.append(content)
    return Corpus(root=root, python_version=platform.python_version(),
                  train_files=tuple(sides[False][0]), validation_files=tuple(sides[True][0]),
                  train=_as_tensor(sides[False][1]), validation=_as_tensor(sides[True][1]),
                  sha256=digest.hexdigest())


@lru_cache(maxsize=1)
def load_corpus() -> Corpus:
    """The running interpreter's corpus, read once per process."""
    return build_corpus()


def _check(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}={value!r}: must be >= 1")


def byte_windows(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``, both int64 ``(len(starts), seq_len)``: ``x[i] = stream[s : s + seq_len]`` and
    ``y[i] = stream[s + 1 : s + seq_len + 1]`` (the next bytes) for each start ``s``."""
    if len(stream) < seq_len + 1:
        raise ValueError(f"Invalid seq_len={seq_len}: the stream holds {len(stream)} bytes, fewer than "
                         "seq_len + 1")
    window = stream[starts.unsqueeze(1) + torch.arange(seq_len + 1)].to(torch.int64)
    return window[:, :-1], window[:, 1:]


def train_windows(corpus: Corpus, batch: int, seq_len: int, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` windows at uniformly random positions of the train bytes (drawn with
    ``generator``): ``(x, y)`` int64 ``(batch, seq_len)``, ``y`` the byte after each of ``x``."""
    _check("batch", batch)
    _check("seq_len", seq_len)
    top = len(corpus.train) - seq_len  # starts in [0, top): the last window ends on the last byte
    starts = torch.randint(0, max(top, 1), (batch,), generator=generator)
    return byte_windows(corpus.train, starts, seq_len)


def validation_starts(length: int, count: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``count`` evenly spaced window starts over a stream of ``length`` bytes (systematic
    sampling): one stride apart, all shifted by one offset in ``[0, stride)`` drawn from ``seed``."""
    span = length - seq_len  # possible starts
    stride = max(span // count, 1)
    offset = int(torch.randint(0, stride, (1,), generator=torch.Generator().manual_seed(seed)))
    return (offset + stride * torch.arange(count)) % max(span, 1)


def validation_windows(corpus: Corpus, count: int, seq_len: int, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of ``count`` validation windows (the same for the same arguments, in every
    process): ``(x, y)`` int64 ``(count, seq_len)``, spread evenly over the validation bytes."""
    _check("count", count)
    _check("seq_len", seq_len)
    starts = validation_starts(len(corpus.validation), count, seq_len, seed)
    return byte_windows(corpus.validation, starts, seq_len)


def bits_per_byte(loss_nats: float | torch.Tensor) -> float | torch.Tensor:
    """Mean next-byte cross-entropy in nats, in bits per byte (divided by ``ln 2``)."""
    return loss_nats / math.log(2)


__all__ = ["Corpus", "VALIDATION_BUCKETS", "bits_per_byte", "build_corpus", "byte_windows", "corpus_files",
           "is_validation", "load_corpus", "stdlib_root", "train_windows", "validation_windows"]
