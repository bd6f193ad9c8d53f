"""Online retrieval: the latest materialised feature values for a batch of entity keys.

A key the store does not have, and a value older than its view's TTL at lookup time, give None (null): the
model's transform then imputes it exactly as it imputed nulls in training. Entity keys are stored as text: a
string key as is, an int64 key in decimal, several keys joined by U+001F; ``encode_keys`` and
``encode_key_column`` (the vectorised form materialisation uses) agree by construction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from raymlops.errors import FeatureStoreError
from raymlops.features.definitions import ResolvedView
from raymlops.features.stores import OnlineStore

__all__ = ["OnlineFeatures", "encode_key_column", "encode_keys"]

_SEP = "\x1f"


def encode_keys(join_keys: Mapping[str, str], columns: Mapping[str, Sequence[Any]]) -> list[str | None]:
    """Store keys for rows given as columns of key values (None where a key is missing or of the wrong type)."""
    cols = []
    for name, kind in join_keys.items():
        if name not in columns:
            raise FeatureStoreError(f"entity key '{name}' is missing; send it for every row")
        cols.append([_text(v, kind) for v in columns[name]])
    if len(cols) == 1:
        return cols[0]
    return [None if None in parts else _SEP.join(parts) for parts in zip(*cols, strict=True)]


def _text(value: Any, kind: str) -> str | None:
    if kind == "string":
        return value if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def encode_key_column(join_keys: Sequence[str]) -> pl.Expr:
    """Polars expression for the store key of each row (keys already cast to their declared types)."""
    if len(join_keys) == 1:
        return pl.col(join_keys[0]).cast(pl.Utf8)
    return pl.concat_str([pl.col(k).cast(pl.Utf8) for k in join_keys], separator=_SEP)


class OnlineFeatures:
    """Reads a service's views from an online store (one ``read`` per view per batch)."""

    def __init__(self, store: OnlineStore, views: Sequence[ResolvedView], clock: Callable[[], float] = time.time):
        self.store, self.views, self.clock = store, list(views), clock
        self._ttl_us = [int(v.ttl.total_seconds() * 1_000_000) if v.ttl else None for v in self.views]

    @property
    def feature_names(self) -> list[str]:
        return [f for v in self.views for f in v.features]

    def get(self, keys: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """Feature columns for rows given as key columns (``{"customer_id": [...]}``); None where unknown."""
        now_us = int(self.clock() * 1_000_000)
        out: dict[str, list[Any]] = {}
        for view, ttl_us in zip(self.views, self._ttl_us, strict=True):
            encoded = encode_keys(view.join_keys, keys)
            present = [k for k in encoded if k is not None]
            found = dict(zip(present, self.store.read(view.name, present), strict=True))
            names = list(view.features)
            cols: list[list[Any]] = [[] for _ in names]
            for k in encoded:
                hit = found.get(k) if k is not None else None
                if hit is None or (ttl_us is not None and now_us - hit[0] > ttl_us):
                    for c in cols:
                        c.append(None)
                    continue
                doc = json.loads(hit[1])
                for c, name in zip(cols, names, strict=True):
                    c.append(doc.get(name))
            out.update(zip(names, cols, strict=True))
        return out
