"""Delivered pipeline code is what was packaged, and nothing else: the full digest is checked before a run uses the
zip, packaging refuses symlinks that leave the tree and leaves secrets out, and a zip that would unpack outside
its directory or past the size bound is refused.

No Ray here: packaging, deploying and building a run's ``runtime_env`` (where the check happens) are file
operations; Ray fetches the zip only when the task starts (tests/integration/test_delivery.py does that).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest

from raymlops import storage
from raymlops.config import load_config
from raymlops.core import impl as core
from raymlops.errors import PipelineError
from raymlops.pipeline import delivery


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [f"storage_uri={tmp_path / 'store'}", *extra])


def _tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, body in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body.encode() if isinstance(body, str) else body)
    return root


def _staged(env: dict) -> dict[str, bytes]:
    """What a run would get as its working directory: the files of the zip its runtime_env names."""
    uri = env["working_dir"]
    assert uri.startswith("file://")  # local storage in these tests
    with zipfile.ZipFile(uri.removeprefix("file://")) as zf:
        return {i.filename.removeprefix("impl/"): zf.read(i) for i in zf.infolist() if not i.is_dir()}


def _zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _forged(tmp_path: Path, entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> delivery.Implementation:
    """An implementation whose manifest, zip sha256 and tree digest all agree: only the entry checks can catch it."""
    data = _zip(entries, symlinks)
    path = tmp_path / "forged.zip"
    path.write_bytes(data)
    digest = core.tree_digest((n.removeprefix("impl/"), hashlib.sha256(b).hexdigest()) for n, b in entries.items())
    return delivery.Implementation(digest=digest, commit=None, dirty=False, created_at=0.0, source="elsewhere",
                                   files=len(entries), size_bytes=sum(map(len, entries.values())), uri=str(path),
                                   zip_sha256=hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------------------------- full digest
def test_a_good_implementation_reaches_the_run_as_exactly_its_files(tmp_path):
    cfg = _cfg(tmp_path)
    impl = delivery.package_implementation(cfg, _tree(tmp_path / "src", {"mypipe.py": "X = 1\n", "pkg/a.py": ""}))
    assert len(impl.digest) == 64 and impl.digest in impl.uri  # named by the full digest, not 12 hex digits
    assert impl.zip_sha256 == hashlib.sha256(storage.read_bytes(impl.uri)).hexdigest()
    delivery.deploy_implementation(cfg, impl, "test")
    env = delivery.runtime_env_for(cfg, delivery.current_implementation(cfg))
    assert _staged(env) == {"mypipe.py": b"X = 1\n", "pkg/a.py": b""}


def test_a_zip_swapped_after_deploy_is_refused_before_a_run_uses_it(tmp_path):
    cfg = _cfg(tmp_path)
    good = delivery.package_implementation(cfg, _tree(tmp_path / "good", {"mypipe.py": "X = 1\n"}))
    evil = delivery.package_implementation(cfg, _tree(tmp_path / "evil", {"mypipe.py": "import os\n"}))
    delivery.deploy_implementation(cfg, good, "test")
    storage.atomic_write_bytes(good.uri, storage.read_bytes(evil.uri))
    with pytest.raises(PipelineError, match=r"sha256.*does not match") as err:
        delivery.runtime_env_for(cfg, delivery.current_implementation(cfg))
    assert good.digest[:12] in str(err.value) and "raymlops pipeline deploy" in str(err.value)


def test_a_zip_and_manifest_swapped_together_still_fail_the_recorded_digest(tmp_path):
    # The manifest's zip sha256 is rewritten to match the swapped zip: the tree digest that deployments.json
    # records for the deployment still tells them apart.
    cfg = _cfg(tmp_path)
    good = delivery.package_implementation(cfg, _tree(tmp_path / "good", {"mypipe.py": "X = 1\n"}))
    evil = delivery.package_implementation(cfg, _tree(tmp_path / "evil", {"mypipe.py": "import os\n"}))
    delivery.deploy_implementation(cfg, good, "test")
    storage.atomic_write_bytes(good.uri, storage.read_bytes(evil.uri))
    manifest = good.uri[:-4] + ".json"
    doc = json.loads(storage.read_text(manifest))
    storage.atomic_write_text(manifest, json.dumps({**doc, "zip_sha256": evil.zip_sha256}))
    with pytest.raises(PipelineError, match=r"digest .* not the digest deployments\.json records"):
        delivery.runtime_env_for(cfg, delivery.current_implementation(cfg))


def test_a_planted_zip_under_the_implementations_name_is_not_adopted_by_packaging(tmp_path):
    cfg = _cfg(tmp_path)
    src = _tree(tmp_path / "src", {"mypipe.py": "X = 1\n"})
    good = delivery.package_implementation(cfg, src)
    evil = delivery.package_implementation(cfg, _tree(tmp_path / "evil", {"mypipe.py": "import os\n"}))
    storage.atomic_write_bytes(good.uri, storage.read_bytes(evil.uri))
    again = delivery.package_implementation(cfg, src)  # the same tree packaged again rewrites the bad zip
    assert again.digest == good.digest
    delivery.deploy_implementation(cfg, again, "test")
    assert _staged(delivery.runtime_env_for(cfg, again)) == {"mypipe.py": b"X = 1\n"}


# ------------------------------------------------------------------------------------------- symlinks
def test_a_symlink_leaving_the_tree_is_refused_naming_it(tmp_path):
    cfg = _cfg(tmp_path)
    outside = _tree(tmp_path / "home", {"secret.txt": "hunter2"})
    src = _tree(tmp_path / "src", {"mypipe.py": "X = 1\n"})
    (src / "conf").mkdir()
    os.symlink(outside / "secret.txt", src / "conf" / "settings.txt")
    with pytest.raises(PipelineError, match=r"conf/settings\.txt is a symlink to .*secret\.txt.*outside") as err:
        delivery.package_implementation(cfg, src)
    assert ".raymlopsignore" in str(err.value)  # says how to fix it
    assert not storage.exists(storage.join(cfg.storage_uri, "pipelines"))  # nothing was written


def test_a_symlinked_directory_leaving_the_tree_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    outside = _tree(tmp_path / "home", {".ssh/id": "key"})
    src = _tree(tmp_path / "src", {"mypipe.py": "X = 1\n"})
    os.symlink(outside, src / "homedir")
    with pytest.raises(PipelineError, match=r"homedir is a symlink to .*outside"):
        delivery.package_implementation(cfg, src)


def test_a_symlink_inside_the_tree_is_packaged_as_its_file(tmp_path):
    cfg = _cfg(tmp_path)
    src = _tree(tmp_path / "src", {"mypipe.py": "X = 1\n"})
    os.symlink("mypipe.py", src / "alias.py")
    impl = delivery.package_implementation(cfg, src)
    assert _staged(delivery.runtime_env_for(cfg, impl)) == {"mypipe.py": b"X = 1\n", "alias.py": b"X = 1\n"}


# ------------------------------------------------------------------------------------------- secrets
SECRETS = {".env": "TOKEN=1", ".env.production": "TOKEN=2", "deploy/server.pem": "pem", "tls.key": "key",
           "id_rsa": "rsa", "keys/id_ed25519.pub": "pub", "creds/credentials.json": "{}", ".netrc": "machine",
           "cert.p12": "p12", ".git/config": "[core]", "aws/credentials": "[default]", "data/big.sqlite": "db",
           "scratch/notes.txt": "private"}


def test_secrets_are_left_out_by_default_and_the_packaging_output_says_so(tmp_path):
    # Even with delivery.exclude emptied: the secret patterns are not a default that a config can drop.
    cfg = _cfg(tmp_path, "delivery.exclude=[]")
    src = _tree(tmp_path / "src", {"mypipe.py": "X = 1\n", "pkg/keyboard.py": "", **SECRETS,
                                   ".raymlopsignore": "# local only\n*.sqlite\nscratch/\n"})
    impl = delivery.package_implementation(cfg, src)
    packaged = set(_staged(delivery.runtime_env_for(cfg, impl)))
    assert packaged == {"mypipe.py", "pkg/keyboard.py", ".raymlopsignore"}
    assert set(impl.secrets_excluded) == {".env", ".env.production", "deploy/server.pem", "tls.key", "id_rsa",
                                          "keys/id_ed25519.pub", "creds/credentials.json", ".netrc", "cert.p12",
                                          ".git/", "aws/credentials"}
    out = delivery.describe(impl)
    assert "left out as secrets" in out and ".env" in out and "tls.key" in out
    assert "2 more by delivery.exclude and .raymlopsignore" in out  # data/big.sqlite, scratch/


def test_the_deploy_command_prints_what_was_left_out(tmp_path):
    cfg = _cfg(tmp_path)
    src = _tree(tmp_path / "src", {"mypipe.py": "X = 1\n", ".env": "TOKEN=1"})
    lines: list[str] = []
    delivery.deploy_pipeline(cfg, src, run_preflight=False, progress=lines.append)
    assert any("left out as secrets" in line and ".env" in line for line in lines), lines


# ------------------------------------------------------------------------------------------- unpacking
@pytest.mark.parametrize(("name", "why"), [
    ("impl/../../outside.py", "'..'"),
    ("/etc/cron.d/x", "absolute"),
    ("C:/x.py", "absolute"),
    ("impl\\..\\x.py", "backslash"),
    ("elsewhere/x.py", "outside impl/"),
])
def test_zip_entries_that_would_unpack_outside_are_refused(tmp_path, name, why):
    cfg = _cfg(tmp_path)
    forged = _forged(tmp_path, {"impl/mypipe.py": b"X = 1\n", name: b"import os\n"})
    with pytest.raises(PipelineError, match=why) as err:
        delivery.deploy_implementation(cfg, forged, "test")
    assert name in str(err.value)
    assert delivery.env_state(cfg).current is None


def test_a_symlink_entry_in_the_zip_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    forged = _forged(tmp_path, {"impl/mypipe.py": b"X = 1\n", "impl/link": b"/etc/passwd"}, symlinks=("impl/link",))
    with pytest.raises(PipelineError, match=r"impl/link.*symlink"):
        delivery.deploy_implementation(cfg, forged, "test")


def test_an_implementation_that_unpacks_past_the_bound_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "delivery.max_mb=1")
    bomb = _forged(tmp_path, {"impl/mypipe.py": b"X = 1\n", "impl/zeros.bin": bytes(3 * 2**20)})
    assert os.path.getsize(bomb.uri) < 2**20 // 10  # small on disk, three times the bound unpacked
    with pytest.raises(PipelineError, match=r"unpacks to 3\.0 MiB.*delivery\.max_mb \(1\)"):
        delivery.deploy_implementation(cfg, bomb, "test")


def test_a_smaller_bound_applies_to_an_implementation_already_deployed(tmp_path):
    cfg = _cfg(tmp_path)
    impl = delivery.package_implementation(cfg, _tree(tmp_path / "src", {"mypipe.py": "#" * 40_000}))
    delivery.deploy_implementation(cfg, impl, "test")
    tight = _cfg(tmp_path, "delivery.max_mb=0.01")  # the same storage, a bound the 40 kB file exceeds
    with pytest.raises(PipelineError, match="delivery.max_mb"):
        delivery.runtime_env_for(tight, delivery.current_implementation(tight))


# ------------------------------------------------------------------------------------------- pure rules
def test_exclusion_names_the_rule_that_left_a_path_out():
    assert core.exclusion("a/b/.env", core.SECRET_PATTERNS) == ".env"
    assert core.exclusion("src/model.key", core.SECRET_PATTERNS) == "*.key"
    assert core.exclusion("src/keyboard.py", core.SECRET_PATTERNS) is None
    assert core.exclusion("benchmarks/results/x.json", ["benchmarks/results"]) == "benchmarks/results"


def test_ignore_file_lines_become_patterns():
    assert core.ignore_patterns("# c\n\n/data/\n*.csv  \nscratch/\n") == ["data", "*.csv", "scratch"]


def test_zip_entry_rules_are_pure_and_name_each_problem():
    ok = [("impl/a.py", 10, False), ("impl/pkg/", 0, False)]
    assert core.zip_entry_problems(ok, top="impl/", max_bytes=100) == []
    bad = core.zip_entry_problems([("impl/a.py", 10, False), ("impl/a.py", 10, False), ("impl/x/../../y", 1, False)],
                                  top="impl/", max_bytes=15)
    assert any("twice" in p for p in bad) and any("'..'" in p for p in bad) and any("unpacks to" in p for p in bad)


def test_the_manifest_round_trips(tmp_path):
    cfg = _cfg(tmp_path)
    impl = delivery.package_implementation(cfg, _tree(tmp_path / "src", {"mypipe.py": "", ".env": "x"}))
    assert delivery.get_implementation(cfg, impl.digest) == impl
    assert asdict(impl)["secrets_excluded"] == (".env",)
