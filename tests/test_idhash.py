"""The compiled event-id hashes (detectors/_idhash.c) are hashlib's, id for id.

Checkpoints hold these hashes (the label join's pending predictions), so a worker
with the compiled loop and one without must agree on every id: UTF-8 of any
length (the block boundaries of BLAKE2b at 128 bytes), non-ASCII, NUL, and the
same errors for what cannot be hashed.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from detectors import performance
from detectors.performance import _hashlib_hashes, id_hash, id_hashes

pytestmark = pytest.mark.skipif(performance._idhash is None,
                                reason="built without a C compiler")


def random_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ0123-_/:é中😀\x00 "
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
            for _ in range(n)]


@pytest.mark.parametrize("size", [0, 1, 63, 64, 127, 128, 129, 255, 256, 257, 1000])
def test_block_boundaries(size: int) -> None:
    ids = ["x" * size, "é" * size, "😀" * (size // 4)]
    assert performance._idhash.hashes(ids) == _hashlib_hashes(ids)


def test_random_ids_match_hashlib() -> None:
    ids = random_ids(5_000, seed=7)
    got = performance._idhash.hashes(ids)
    assert got == _hashlib_hashes(ids) == [id_hash(i) for i in ids]
    assert all(0 <= h < 2 ** 63 for h in got)
    assert id_hashes(ids) == got  # what the label join calls


def test_accepts_any_sequence() -> None:
    ids = ("a", "b", "c")
    assert performance._idhash.hashes(ids) == _hashlib_hashes(list(ids))
    assert performance._idhash.hashes([]) == []


@pytest.mark.parametrize(("bad", "error"), [(["ok", "\ud800"], UnicodeEncodeError),
                                            (["ok", 3], TypeError),
                                            (["ok", b"raw"], TypeError)])
def test_same_errors_as_hashlib(bad: list[object], error: type[Exception]) -> None:
    with pytest.raises(error):
        _hashlib_hashes(bad)  # type: ignore[arg-type]
    with pytest.raises(error):
        performance._idhash.hashes(bad)  # type: ignore[arg-type]


def test_hash_arrays_are_the_same_hashes_with_or_without_the_compiled_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = random_ids(500, seed=11)
    compiled = performance.id_hash_array(ids)
    monkeypatch.setattr(performance, "_idhash", None)
    plain = performance.id_hash_array(ids)
    assert compiled.dtype == plain.dtype == np.uint64
    assert compiled.tolist() == plain.tolist() == _hashlib_hashes(ids)
    assert performance.id_hash_array([]).tolist() == []


# Each width the CPU can run, in a fresh interpreter (the width is picked at import).
LANES_CHECK = """
import random, sys
from detectors import _idhash
from detectors.performance import _hashlib_hashes
rng = random.Random(11)
alphabet = "abcXYZ0123-_/:\\u00e9\\u4e2d\\U0001f600\\x00 "
ids = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 160))) for _ in range(3000)]
ids += ["x" * n for n in range(0, 260)]          # every length around one block
for count in range(0, 20):                       # groups and what is left after them
    part = ids[:count]
    assert _idhash.hashes(part) == _hashlib_hashes(part), count
assert _idhash.hashes(ids) == _hashlib_hashes(ids)
print(_idhash.LANES)
"""


@pytest.mark.parametrize("most", ["1", "4", "8"])
def test_every_width_gives_hashlib_hashes(most: str) -> None:
    """Ids of one block are hashed several at once (AVX2: 4, AVX-512: 8) where the CPU
    can; each width, and one at a time, must give hashlib's hashes, whatever is left
    over after the last full group."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "SENTINELLE_IDHASH_LANES": most}
    done = subprocess.run([sys.executable, "-c", LANES_CHECK], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) <= int(most)
    if most == "1":
        assert int(done.stdout) == 1
