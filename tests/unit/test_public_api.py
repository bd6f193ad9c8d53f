import subprocess
import sys

import raymlops


def test_import_is_cheap_and_starts_nothing():
    code = "import sys, raymlops; print(sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in raymlops.__all__:
        assert getattr(raymlops, name) is not None, name


def test_unknown_name_is_an_attribute_error():
    try:
        raymlops.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")
