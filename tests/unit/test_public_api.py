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


def test_run_pipeline_is_a_deprecated_alias_of_run_ct():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = raymlops.run_pipeline
    assert old is raymlops.run_ct
    assert any(issubclass(w.category, DeprecationWarning) and "run_ct" in str(w.message) for w in caught)


def test_the_read_side_is_public_and_typed():
    import inspect

    assert {"runs", "lineage", "run_ct"} <= set(raymlops.__all__)
    assert "run_pipeline" not in raymlops.__all__
    assert inspect.signature(raymlops.runs).return_annotation in ("list[RunSummary]",)
    assert inspect.signature(raymlops.lineage).return_annotation in ("Lineage",)


def test_component_overloads_tell_editors_what_comes_back():
    from typing import get_overloads

    from raymlops.pipeline.component import component

    shapes = [str(o.__annotations__.get("return")) for o in get_overloads(component)]
    assert shapes == ["Component", "Callable[[Callable[..., Any]], Component]"]
