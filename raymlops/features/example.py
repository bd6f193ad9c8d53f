"""Example feature data for ``configs/features.yaml``: customer profiles, daily usage and churn labels over time.

Profiles change a few times per customer (with a late correction now and then: same event time, later created
time); usage arrives daily; each label row is a customer and a time at which the churn outcome was observed,
drawn from the features as of that time, so a point-in-time-correct training set learns and a leaky one cheats.
The same arguments always write the same files.
"""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymlops import storage

__all__ = ["generate_example"]

_US = 1_000_000
_DAY = 86_400 * _US
_REGIONS, _PLANS, _PAYMENTS = ("north", "south", "east", "west"), ("basic", "standard", "premium"), \
    ("card", "bank", "paypal", "cash")
_PRICE = np.array([30.0, 60.0, 95.0])


def _write(uri: str, table: pa.Table) -> str:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.atomic_write_bytes(uri, buf.getvalue())
    return uri


def generate_example(out_uri: str, *, customers: int = 500, days: int = 30, start: str = "2026-01-01",
                     labels_per_customer: int = 2, seed: int = 0) -> dict[str, str]:
    """Write ``customer_profile``, ``customer_usage`` and ``labels`` parquet files under ``out_uri``; their URIs."""
    rng = np.random.default_rng(seed)
    t0 = int(dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc).timestamp()) * _US
    ids = np.array([f"C{i:06d}" for i in range(customers)])

    # Profiles: a first row at t0 and 0-2 plan changes; ~5% of rows get a later correction at the same event time.
    n_changes = rng.integers(0, 3, customers)
    who = np.concatenate([np.arange(customers), np.repeat(np.arange(customers), n_changes)])
    when = np.concatenate([np.full(customers, t0), t0 + rng.integers(1, days * _DAY, int(n_changes.sum()))])
    plan = rng.integers(0, 3, who.size)
    created = when + rng.integers(0, 3600 * _US, who.size)
    fix = rng.random(who.size) < 0.05
    who, when, created = (np.concatenate([a, a[fix]]) for a in (who, when, created))
    created[-int(fix.sum()):] += 6 * 3600 * _US if fix.any() else 0
    plan = np.concatenate([plan, (plan[fix] + 1) % 3])
    region = rng.integers(0, 4, customers)[who]
    pay = rng.integers(0, 4, who.size)
    tenure = rng.integers(0, 60, customers)[who] + ((when - t0) // (30 * _DAY))
    ts = pa.timestamp("us", tz="UTC")
    profile = pa.table({
        "customer_id": ids[who], "event_ts": pa.array(when, ts), "created_ts": pa.array(created, ts),
        "region": np.array(_REGIONS)[region], "plan": np.array(_PLANS)[plan],
        "payment_method": np.array(_PAYMENTS)[pay], "tenure_months": tenure.astype(np.int64),
    })

    # Usage: one row per customer per day, at a random time of that day.
    cust = np.repeat(np.arange(customers), days)
    day = np.tile(np.arange(days), customers)
    utime = t0 + day * _DAY + rng.integers(0, _DAY, cust.size)
    base = rng.lognormal(np.log(20.0), 0.5, customers)[cust]
    usage = np.round(base * rng.lognormal(0, 0.3, cust.size), 2)
    calls = rng.poisson(1.0 + 1.5 * (usage < 12), cust.size).astype(np.int64)
    charges = np.round(_PRICE[rng.integers(0, 3, customers)][cust] + rng.normal(0, 5, cust.size), 2)
    usage_t = pa.table({
        "customer_id": ids[cust], "event_ts": pa.array(utime, ts), "monthly_charges": charges,
        "total_charges": np.round(charges * (1 + day), 2), "support_calls": calls, "usage_gb": usage,
    })

    # Labels: churn depends on recent usage and support calls (as of the label time), plus noise.
    lc = np.repeat(np.arange(customers), labels_per_customer)
    ltime = t0 + rng.integers(2 * _DAY, days * _DAY, lc.size)
    lday = np.clip((ltime - t0) // _DAY - 1, 0, days - 1)
    flat = lc * days + lday
    logit = -1.0 + 0.6 * (calls[flat] - 1.5) - 0.05 * (usage[flat] - 20.0)
    churned = (rng.random(lc.size) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    labels = pa.table({"customer_id": ids[lc], "event_ts": pa.array(ltime, ts), "churned": churned})

    return {name: _write(storage.join(out_uri, name, "part-0.parquet"), t)
            for name, t in (("customer_profile", profile), ("customer_usage", usage_t), ("labels", labels))}
