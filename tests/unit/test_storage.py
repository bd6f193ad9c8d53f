import pytest

from raymlops import storage


def test_atomic_write_leaves_no_temp_and_lists(tmp_path):
    uri = str(tmp_path / "a" / "b.json")
    storage.atomic_write_text(uri, "{}")
    assert storage.read_text(uri) == "{}"
    (tmp_path / "a" / "c.json.tmp-1234abcd").write_text("partial")
    (tmp_path / "a" / ".hidden").write_text("x")
    assert storage.list_files(str(tmp_path)) == [uri]


def test_failed_write_leaves_nothing(tmp_path):
    uri = str(tmp_path / "x.bin")
    with pytest.raises(TypeError):
        storage.atomic_write_bytes(uri, object())  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_file_uri_and_join(tmp_path):
    uri = f"file://{tmp_path}/d/e.txt"
    storage.atomic_write_text(uri, "hi")
    assert storage.exists(uri) and storage.read_text(uri) == "hi"
    assert storage.join("s3://b/p/", "x", "/y") == "s3://b/p/x/y"
