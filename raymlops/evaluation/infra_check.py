"""Infrastructure check: does a model package load and predict in a fresh Python process, and at what cost?

``check_package_in_fresh_process`` runs ``python -m raymlops.evaluation.infra_check`` in a subprocess (the
interpreter running raymlops, nothing imported or cached from this process), which loads the package, predicts on
sample rows and prints one JSON line: the same conditions a new Serve replica or batch job meets. Every failure,
including a crash or a timeout of the child, comes back as a dict with ``error`` set, never as an exception.

The child verifies the package against the expected digest under the loading config's ``PackagePolicy``, and
runs with a scrubbed environment (``child_env``): the path, locale and temp variables, the signing key it needs to
verify, and, for a package on an object store, that store's credential variables; nothing else of this process's
environment (database URIs, tokens) reaches it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_LOADER", "check_package_in_fresh_process", "child_env", "package_size_mb"]

DEFAULT_LOADER = "raymlops.model.package:load_package"
_MB = 1024 * 1024
# What the child keeps of this process's environment. The signing key variables are named in core.package_trust.
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
# Credentials pyarrow's object-store filesystems read, passed only when the package itself lives on one.
_STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_")


def child_env(environ: Mapping[str, str], package_uri: str, pythonpath: str) -> dict[str, str]:
    """The fresh-process check's environment: an allow-list of ``environ``, never a copy of all of it.

    ``pythonpath`` (this raymlops, then ``environ``'s PYTHONPATH) lets the child import the same code; the
    signing key variables let it verify a signature; object-store credentials come along only for a remote
    ``package_uri`` (the child must read the package the way a replica does).
    """
    from raymlops.core.package_trust import KEY_ENV, KEY_FILE_ENV

    keep = {k: environ[k] for k in (*_KEEP_ENV, KEY_ENV, KEY_FILE_ENV) if k in environ}
    if "://" in package_uri and not package_uri.startswith("file://"):
        keep.update({k: v for k, v in environ.items() if k.startswith(_STORE_ENV_PREFIXES)})
    keep["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, environ.get("PYTHONPATH")) if p)
    return keep


def package_size_mb(package_uri: str) -> float:
    """Total size of the files under a package directory (local path or pyarrow URI), in MiB."""
    import pyarrow.fs as pafs

    from raymlops import storage

    fs, path = storage.resolve(package_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File) / _MB


def _result(**fields: Any) -> dict[str, Any]:
    base = {
        "loaded": False,
        "predict_ok": False,
        "output_shape_ok": False,
        "package_mb": None,
        "peak_memory_mb": None,
        "load_time_s": None,
        "error": None,
    }
    base.update(fields)
    return base


def _peak_rss_mb() -> float:
    # Linux keeps ru_maxrss across exec, so a child forked from a big parent (pytest, a Ray worker) would report
    # the parent's size; VmHWM belongs to this process image only.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def _child(package_uri: str, rows_path: str, expected_rows: int, loader: str, expected_digest: str,
           policy: dict[str, Any]) -> dict[str, Any]:
    """Runs in the fresh process: load, predict, measure."""
    out = _result()
    try:
        from raymlops.core.package_trust import PackagePolicy

        module, _, attr = loader.partition(":")
        load = getattr(importlib.import_module(module), attr)
        started = time.perf_counter()
        model = load(package_uri, expected_digest, policy=PackagePolicy.from_dict(policy))
        out["load_time_s"] = round(time.perf_counter() - started, 3)
        out["loaded"] = True
    except Exception as err:  # any loader failure is the answer, not a crash
        out["error"] = f"load failed: {type(err).__name__}: {err}"
        out["peak_memory_mb"] = _peak_rss_mb()
        return out
    try:
        import pyarrow as pa

        rows = json.loads(Path(rows_path).read_text())
        outputs = model.predict(pa.Table.from_pylist(rows))
        out["predict_ok"] = True
        shapes = {k: list(getattr(v, "shape", (len(v),))) for k, v in dict(outputs).items()}
        out["output_shapes"] = shapes
        out["output_shape_ok"] = bool(shapes) and all(s[:1] == [expected_rows] for s in shapes.values())
        if not out["output_shape_ok"]:
            out["error"] = f"expected {expected_rows} rows in every output, got shapes {shapes}"
    except Exception as err:  # a model that cannot predict is a verdict, reported to the parent
        out["error"] = f"predict failed: {type(err).__name__}: {err}"
    out["peak_memory_mb"] = _peak_rss_mb()
    return out


def _last_json_line(text: str) -> dict[str, Any] | None:
    # The loaded code may print to stdout; the report is the last line that parses as a JSON object.
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def check_package_in_fresh_process(
    package_uri: str,
    sample_rows: Sequence[dict[str, Any]],
    expected_rows: int,
    timeout_s: float = 120,
    *,
    expected_digest: str,
    policy: Any = None,
    loader: str = DEFAULT_LOADER,
) -> dict[str, Any]:
    """Load ``package_uri`` in a new Python process, predict on ``sample_rows`` and report.

    Returns ``{loaded, predict_ok, output_shape_ok, package_mb, peak_memory_mb, load_time_s, error}`` (plus
    ``output_shapes`` when it predicted). ``peak_memory_mb`` is the child's peak RSS, interpreter and imports
    included. The child verifies the package against ``expected_digest`` (the digest ``save_package`` or the
    registry recorded) under ``policy`` (a ``PackagePolicy``; default: built-in models only). ``loader`` is the
    ``module:function`` that loads a package, called as ``load(uri, expected_digest, policy=...)`` (tests
    substitute a fake).
    """
    from raymlops.core.package_trust import PackagePolicy

    if not expected_digest:
        return _result(error="no expected digest: a package is never loaded unverified; pass the digest that "
                             "save_package or the registry recorded")
    policy_doc = (policy or PackagePolicy()).to_dict()
    if "://" not in package_uri:
        package_uri = str(Path(package_uri).expanduser().resolve())  # the child runs in another directory
    try:
        size_mb: float | None = package_size_mb(package_uri)
    except Exception:  # an unreadable location is reported by the child's load error, which says more
        size_mb = None
    # The child must import this raymlops even when it is not installed (a source checkout on PYTHONPATH).
    env = child_env(os.environ, package_uri, str(Path(__file__).resolve().parents[2]))
    with tempfile.TemporaryDirectory(prefix="raymlops-infra-") as tmp:
        rows_path = Path(tmp) / "rows.json"
        rows_path.write_text(json.dumps(list(sample_rows), default=str))
        cmd = [
            sys.executable, "-m", "raymlops.evaluation.infra_check",
            "--package", package_uri, "--rows", str(rows_path), "--expected-rows", str(expected_rows),
            "--loader", loader, "--digest", expected_digest, "--policy", json.dumps(policy_doc),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return _result(package_mb=size_mb, error=f"timed out after {timeout_s:g} s loading and predicting")
        except OSError as err:
            return _result(package_mb=size_mb, error=f"cannot start {sys.executable}: {err}")
    report = _last_json_line(proc.stdout)
    if report is None:
        why = _tail(proc.stderr) or _tail(proc.stdout) or "no output"
        return _result(package_mb=size_mb, error=f"the check process exited with code {proc.returncode}: {why}")
    report["package_mb"] = size_mb
    return _result(**report)


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: print the report as one JSON line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m raymlops.evaluation.infra_check")
    parser.add_argument("--package", required=True)
    parser.add_argument("--rows", required=True, help="JSON file with a list of row objects")
    parser.add_argument("--expected-rows", type=int, required=True)
    parser.add_argument("--loader", default=DEFAULT_LOADER)
    parser.add_argument("--digest", required=True, help="the package digest the registry recorded")
    parser.add_argument("--policy", default="{}", help="PackagePolicy as JSON (allowed_factories, require_signature)")
    args = parser.parse_args(argv)
    report = _child(args.package, args.rows, args.expected_rows, args.loader, args.digest, json.loads(args.policy))
    sys.stdout.write("\n" + json.dumps(report, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
