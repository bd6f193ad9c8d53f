"""`raymlops status`: where the loop stands, gathered without Ray from the registry, the controller's persisted
state, the serving app's own HTTP info and the last monitor pass."""

from __future__ import annotations

import datetime as dt
from typing import Any

from raymlops import storage
from raymlops.config import Config
from raymlops.control.statefile import read_lease, read_saved, state_uri
from raymlops.errors import RaymlopsError

__all__ = ["blocked_lines", "gather_status", "render_status"]


def _registry(cfg: Config) -> dict[str, Any]:
    from raymlops.registry.models import ModelRegistry

    reg = ModelRegistry(cfg.tracking_uri)
    try:
        if reg.find_aliases(cfg.name) is None:
            return {"versions": [], "aliases": {}}
        metric = f"test_{cfg.evaluation.primary_metric}"
        versions = [{"version": v.version, "aliases": list(v.aliases), metric: v.tags.get(metric),
                     "pipeline_run_id": v.tags.get("pipeline_run_id")} for v in reg.list_versions(cfg.name)]
        return {"versions": versions, "aliases": reg.aliases(cfg.name)}
    except RaymlopsError as err:
        return {"error": str(err)}


def _serving(cfg: Config) -> dict[str, Any]:
    import httpx

    from raymlops.serve.auth import client_headers
    from raymlops.serve.urls import base_url, model_url

    url = model_url(base_url(cfg), cfg.name)
    try:
        r = httpx.get(url, timeout=3, headers=client_headers())
        return {"url": url, **(r.json() if r.status_code == 200 else {"http_status": r.status_code})}
    except (httpx.HTTPError, ValueError) as err:
        return {"url": url, "error": f"not reachable ({type(err).__name__})"}


def _lease(cfg: Config) -> dict[str, Any] | None:
    held = read_lease(cfg)
    if held is None:
        return None
    return {"holder": held.holder, "renewed_at": held.renewed_at, "expires_at": held.expires_at,
            "live": held.live(dt.datetime.now().timestamp())}


def gather_status(cfg: Config) -> dict[str, Any]:
    """Everything `raymlops status` shows, as one JSON-safe document."""
    doc: dict[str, Any] = {"pipeline": cfg.name, "registry": _registry(cfg), "serving": _serving(cfg)}
    uri = state_uri(cfg)
    saved = read_saved(cfg)
    if saved is not None:
        s = saved.state
        doc["controller"] = {"state_uri": uri, "champion": s["champion"], "previous": s["previous"],
                             "paused": s["paused"], "run": s["run"], "queue": s["queue"], "rollout": s["rollout"],
                             "pending_canary": s["pending_canary"], "blocked": s.get("blocked"),
                             "recent_events": saved.events[-8:], "lease": _lease(cfg)}
        doc["monitor"] = saved.monitor[-1] if saved.monitor else None
        doc["weights_timeline"] = saved.timeline[-20:]
    else:
        doc["controller"] = None
    doc["where"] = {
        "mlflow ui": f"mlflow ui --backend-store-uri {cfg.tracking_uri}",
        "monitor report": storage.join(cfg.storage_uri, "reports", "monitor", cfg.name, "latest.html"),
        "controller events": f"raymlops events CONFIG (state in {uri})",
    }
    return doc


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


def blocked_lines(b: dict[str, Any]) -> list[str]:
    """The controller's parked data (``raymlops.control.blocking.BlockRecord`` as a dict) for the status text."""
    from raymlops.control.blocking import anomaly_text

    version = "?" if b["schema_version"] is None else f"v{b['schema_version']}"
    out = [f"  BLOCKED: data of run {b['run_id']} stopped by validation against schema {version} at {_when(b['at'])}"
           + (f" (attempt {b['attempts']})" if b["attempts"] > 1 else "") + "; no automatic run until it can pass"]
    out += [f"    {anomaly_text(a)}" for a in b["anomalies"][:5]]
    if b["anomaly_count"] > min(5, len(b["anomalies"])):
        out.append(f"    ... {b['anomaly_count'] - min(5, len(b['anomalies']))} more in {b['report_uri']}")
    if b.get("note"):
        out.append(f"    {b['note']}")
    out += [f"    {step}: {cmd}" for step, cmd in zip(("review", "accept"), b["commands"], strict=False)]
    out.append("    or fix the data at the source (removing the bad files retries it; after a fix in place: "
               "raymlops trigger CONFIG)")
    if b["held"]:
        out.append(f"    held meanwhile: {', '.join(b['held'])}")
    return out


def render_status(doc: dict[str, Any]) -> str:
    """The status document as text for a terminal."""
    out = [f"pipeline {doc['pipeline']}"]
    reg = doc["registry"]
    if "error" in reg:
        out.append(f"registry: {reg['error']}")
    else:
        out.append("model versions" + ("" if reg["versions"] else ": none registered yet"))
        for v in reg["versions"]:
            metric = next((k for k in v if k.startswith("test_")), None)
            figure = f"  {metric} {v[metric]}" if metric and v[metric] is not None else ""
            out.append(f"  v{v['version']:<4} {','.join(v['aliases']) or '-':<22}{figure}")
    srv = doc["serving"]
    if "error" in srv or "http_status" in srv:
        out.append(f"serving: {srv.get('error') or srv.get('http_status')} at {srv['url']}")
    else:
        split = ", ".join(f"v{k} {w:g}%" for k, w in (srv.get("weights") or {}).items())
        out.append(f"serving {srv['url']}: {split}")
    ctl = doc["controller"]
    if ctl is None:
        out.append("controller: never started (`raymlops controller start CONFIG`)")
    else:
        r = ctl["rollout"]
        rollout = "idle" if r["phase"] == "idle" else (
            f"{r['phase']} v{r['canary_version']} at {r['weight']:g}% (step {r['step_index'] + 1} of "
            f"{len(r['steps'])}, failures {r['failures']})")
        run = ctl["run"]
        out.append(f"controller: champion v{ctl['champion'] or '-'}, rollout {rollout}"
                   + (", PAUSED" if ctl["paused"] else ""))
        lease = ctl.get("lease")
        if lease is not None:
            out.append(f"  lease: {lease['holder']}, " + (f"until {_when(lease['expires_at'])}" if lease["live"]
                       else f"expired {_when(lease['expires_at'])} (no controller running)"))
        out.append(f"  run: {run['run_id'] or '(starting)'} since {_when(run['started_at'])}" if run
                   else "  run: none in flight")
        if ctl["queue"]:
            out.append("  queued: " + ", ".join(t["kind"] for t in ctl["queue"]))
        if ctl.get("blocked"):
            out.extend(blocked_lines(ctl["blocked"]))
        for e in ctl["recent_events"]:
            out.append(f"  {e['seq']:>5} {_when(e['at'])} {e['kind']:<20} {e['message']}")
    if doc.get("monitor"):
        from raymlops.control.monitor import monitor_status_lines

        out.extend(monitor_status_lines(doc["monitor"]))
    out.append("where to look")
    out.extend(f"  {k:<18} {v}" for k, v in doc["where"].items())
    return "\n".join(out)
