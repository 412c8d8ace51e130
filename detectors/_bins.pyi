from collections.abc import Sequence
from typing import Any

ABI: int

def categories(values: Sequence[Any], index: dict[str, int], fallback: int, /) -> bytearray: ...
def numeric(values: Any, edges: Any, /) -> bytearray: ...
