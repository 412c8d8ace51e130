from typing import Any

def predictions(data: bytes, key: bytes | None, max_id_chars: int, max_features: int,
                max_events: int, min_ts: float, max_ts: float, /) -> tuple[Any, ...] | None: ...
