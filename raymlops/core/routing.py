"""Traffic splitting for serving: weight validation, sticky weighted hashing and shadow sampling.

Pure and per-request cheap: a ``RoutingTable`` precomputes everything ``pick_version`` needs, so a pick is a
few hashes (with a routing key) or one bisection (without).

Sticky assignment uses weighted rendezvous hashing: version ``v`` scores ``-ln(h(key, v)) / w_v`` with ``h`` a
stable hash in (0, 1], and the lowest score wins. Version ``v`` then wins with probability ``w_v / sum(w)``, the
same key keeps its version while the weights are unchanged, and because only the ratios of the weights matter,
a version whose weight rises while the others keep their ratios to each other (a two-version canary, or a canary
taking its share from all the others in proportion) only gains keys: no key moves away from it, and no key moves
between the other versions. (When the canary's share comes from one version alone among three or more, the
ratio between the others changes too, and some keys move between them: that is inherent to the split, not to
the hash.)
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from raymlops.errors import ServingError

__all__ = ["RoutingTable", "pick_version", "should_shadow", "validate_weights"]

_TOTAL = 100.0
_TOLERANCE = 1e-6
_TWO64 = float(2**64)


def validate_weights(weights: Mapping[str, float], known: Iterable[str]) -> dict[str, float]:
    """Check a weight map (percent per version) and return it as ``{version: float}``.

    Weights must be finite, non-negative numbers for known versions, sum to 100 (within 1e-6) and give at least
    one version traffic. Raises ``ServingError`` naming the version, the value and the fix.
    """
    known_set = set(known)
    if not isinstance(weights, Mapping) or not weights:
        raise ServingError(f"no traffic weights given ({weights!r}); give at least one version a weight, e.g. "
                           f"{{'<version>': 100}}")
    out: dict[str, float] = {}
    for version, value in weights.items():
        if version not in known_set:
            raise ServingError(f"weight for unknown version {version!r}; deployed versions are "
                               f"{sorted(known_set)}: deploy it first or remove it from the weights")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ServingError(f"weight for version {version!r} is {value!r}, not a number; give a percent "
                               "such as 10")
        w = float(value)
        if not math.isfinite(w) or w < 0:
            raise ServingError(f"weight for version {version!r} is {value!r}; weights must be finite and >= 0 "
                               "(set it to 0 to take the version out of rotation)")
        out[version] = w
    total = sum(out.values())
    if total <= 0:
        raise ServingError(f"every weight is 0 ({out}); give at least one version traffic")
    if abs(total - _TOTAL) > _TOLERANCE:
        raise ServingError(f"weights sum to {total:g}, not 100 ({out}); adjust them so they add up to 100")
    return out


def _unit_hash(data: bytes) -> float:
    """A stable hash of ``data`` in (0, 1] (never 0, so its log is finite)."""
    x = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return (x + 1) / _TWO64


@dataclass(frozen=True)
class RoutingTable:
    """Validated traffic weights (percent per version) and an optional shadow version with its mirrored share.

    A shadow version is mirrored, never answered from, so it must not also carry live weight.
    """

    weights: dict[str, float]
    shadow: str | None = None
    shadow_pct: float = 0.0
    # Precomputed for pick_version: versions with traffic, their hash prefixes, inverse weights and the CDF.
    _live: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _inverse: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _cumulative: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = validate_weights(self.weights, self.weights.keys() if isinstance(self.weights, Mapping) else ())
        pct = self.shadow_pct
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0.0 <= pct <= 100.0:
            raise ServingError(f"shadow_pct is {pct!r}; give a percent between 0 and 100")
        if pct > 0 and not self.shadow:
            raise ServingError(f"shadow_pct is {pct} but no shadow version is set; name the shadow version "
                               "or set shadow_pct to 0")
        if self.shadow and weights.get(self.shadow, 0.0) > 0:
            raise ServingError(f"version {self.shadow!r} is the shadow and also has weight "
                               f"{weights[self.shadow]:g}; a shadow only receives mirrored traffic, so set its "
                               "weight to 0 or pick another shadow")
        live = tuple(v for v, w in weights.items() if w > 0)
        encoded = [v.encode("utf-8", "surrogatepass") for v in live]
        cumulative, acc = [], 0.0
        for v in live:
            acc += weights[v]
            cumulative.append(acc)
        set_ = object.__setattr__  # frozen dataclass: derived fields are set once, here
        set_(self, "weights", weights)
        set_(self, "shadow_pct", float(pct))
        set_(self, "_live", live)
        # A length prefix keeps (version, key) pairs unambiguous: ("a", "bc") and ("ab", "c") hash differently.
        set_(self, "_prefixes", tuple(len(e).to_bytes(4, "little") + e for e in encoded))
        set_(self, "_inverse", tuple(1.0 / weights[v] for v in live))
        set_(self, "_cumulative", tuple(cumulative))

    @property
    def versions(self) -> list[str]:
        """Versions that currently receive traffic (weight > 0)."""
        return list(self._live)


def pick_version(table: RoutingTable, routing_key: str | None, u: float) -> str:
    """The version that serves a request.

    With a ``routing_key`` the choice is sticky and consistent (weighted rendezvous hashing, see the module
    docstring) and ``u`` is ignored; without one, ``u`` (uniform in [0, 1), drawn by the caller) picks by weight.
    """
    live = table._live
    if len(live) == 1:
        return live[0]
    if routing_key is not None:
        key = routing_key.encode("utf-8", "surrogatepass")
        best, best_score = live[0], math.inf
        for version, prefix, inverse in zip(live, table._prefixes, table._inverse, strict=True):
            score = -math.log(_unit_hash(prefix + key)) * inverse
            if score < best_score:
                best, best_score = version, score
        return best
    cumulative = table._cumulative
    i = bisect.bisect_right(cumulative, u * cumulative[-1])
    return live[min(i, len(live) - 1)]  # u == 1.0 or float rounding at the top end: the last version


def should_shadow(table: RoutingTable, request_id: str, u: float | None = None) -> bool:
    """Whether this request is mirrored to the shadow version: ``u < shadow_pct / 100``.

    With ``u=None`` the decision is a stable hash of ``request_id`` instead, so a replayed request decides alike.
    """
    if table.shadow is None or table.shadow_pct <= 0:
        return False
    if u is None:
        u = _unit_hash(b"shadow\x00" + request_id.encode("utf-8", "surrogatepass")) - 1.0 / _TWO64
    return u < table.shadow_pct / _TOTAL
