"""Fingerprints change exactly when what decides a step's outputs changes; digests follow the data."""

from __future__ import annotations

import os
import textwrap

import pyarrow.fs as pafs
import pytest

from raymlops.core.fingerprint import canonical_json, digest_tree, digest_value, fingerprint, source_hash
from raymlops.errors import DataError, PipelineError

BASE = dict(
    component="prep",
    version="1",
    code_hash="abc",
    params={"a": 1, "b": [1, 2]},
    input_digests={"x": "sha256:1"},
)


def fp(**changes):
    return fingerprint(**{**BASE, **changes})


def test_same_inputs_same_fingerprint_and_key_order_does_not_matter():
    assert fp() == fp()
    assert fp(params={"b": [1, 2], "a": 1}) == fp()
    assert len(fp()) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"params": {"a": 2, "b": [1, 2]}},
        {"params": {"a": 1, "b": [2, 1]}},
        {"params": {"a": 1.5, "b": [1, 2]}},
        {"input_digests": {"x": "sha256:2"}},
        {"input_digests": {"y": "sha256:1"}},
        {"code_hash": "abd"},
        {"version": "2"},
        {"component": "train"},
        {"extra": {"config": {"epochs": 3}}},
    ],
)
def test_any_change_gives_a_new_fingerprint(change):
    assert fp(**change) != fp()


def test_non_json_params_are_refused_with_their_owner_named():
    with pytest.raises(PipelineError, match="component 'prep'.*JSON-safe"):
        fp(params={"a": object()})
    with pytest.raises(PipelineError, match="JSON-safe"):
        fp(params={"a": float("nan")})
    with pytest.raises(PipelineError, match="step 'x' output 'y'"):
        canonical_json({1, 2}, "step 'x' output 'y'")


def test_digest_value_is_canonical():
    assert digest_value({"a": 1, "b": 2}) == digest_value({"b": 2, "a": 1})
    assert digest_value([1, 2]) != digest_value([2, 1])


def _load(tmp_path, name, source):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    ns: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    return ns["step"]


def test_code_edit_changes_source_hash_but_formatting_comments_docstring_and_decorators_do_not(tmp_path):
    deco = "def deco(**kw):\n    return lambda f: f\n"
    base = _load(tmp_path, "a", deco + "@deco(num_cpus=1)\ndef step(ctx, x):\n    return x + 1\n")
    same = _load(
        tmp_path,
        "b",
        deco
        + "@deco(num_cpus=2)\ndef step(ctx,   x):\n    '''Adds one.'''\n    # comment\n    return (x + 1)\n",
    )
    edited = _load(tmp_path, "c", deco + "@deco(num_cpus=1)\ndef step(ctx, x):\n    return x + 2\n")
    assert source_hash(base) == source_hash(same)
    assert source_hash(base) != source_hash(edited)


def test_source_hash_without_source_falls_back_to_bytecode():
    a = eval("lambda ctx: 1")
    b = eval("lambda ctx: 2")
    assert source_hash(a) != source_hash(b)


def test_digest_tree_content_mode(tmp_path):
    fs = pafs.LocalFileSystem()
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("hello")
    (tmp_path / "d" / "sub" / "b.txt").write_text("world")
    d = str(tmp_path / "d")
    first = digest_tree(fs, d)
    assert first.startswith("sha256:") and digest_tree(fs, d) == first

    (tmp_path / "d" / ".hidden").write_text("ignored")
    (tmp_path / "d" / "x.tmp-123").write_text("ignored")
    assert digest_tree(fs, d) == first

    (tmp_path / "d" / "sub" / "b.txt").write_text("World")
    assert digest_tree(fs, d) != first
    (tmp_path / "d" / "sub" / "b.txt").write_text("world")
    assert digest_tree(fs, d) == first

    (tmp_path / "d" / "sub" / "b.txt").rename(tmp_path / "d" / "sub" / "c.txt")
    assert digest_tree(fs, d) != first  # paths are part of a directory's identity


def test_digest_of_a_file_does_not_depend_on_its_name(tmp_path):
    fs = pafs.LocalFileSystem()
    (tmp_path / "a.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "b.bin").write_bytes(b"\x00" * 10)
    assert digest_tree(fs, str(tmp_path / "a.bin")) == digest_tree(fs, str(tmp_path / "b.bin"))


def test_stat_mode_follows_size_and_mtime_without_reading(tmp_path):
    fs = pafs.LocalFileSystem()
    f = tmp_path / "data.parquet"
    f.write_bytes(b"abc")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    first = digest_tree(fs, str(tmp_path), "stat")
    assert first.startswith("stat:") and first != digest_tree(fs, str(tmp_path), "content")
    assert digest_tree(fs, str(tmp_path), "stat") == first
    f.write_bytes(b"abd")  # same size, new mtime
    assert digest_tree(fs, str(tmp_path), "stat") != first
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert digest_tree(fs, str(tmp_path), "stat") == first  # the documented blind spot of stat mode


def test_missing_path_and_bad_mode(tmp_path):
    fs = pafs.LocalFileSystem()
    with pytest.raises(DataError, match="does not exist"):
        digest_tree(fs, str(tmp_path / "nope"))
    with pytest.raises(PipelineError, match="unknown"):
        digest_tree(fs, str(tmp_path), "fast")  # type: ignore[arg-type]
