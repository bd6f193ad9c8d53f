"""Model registry on a real MLflow (fresh migrated SQLite per test): versions, idempotency, aliases."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from raymlops.errors import RegistryError
from raymlops.registry.models import DIGEST_TAG, RUN_TAG, ModelRegistry


@pytest.fixture
def registry(tracking_uri) -> ModelRegistry:
    return ModelRegistry(tracking_uri, registry_uri=tracking_uri)


def _register(registry: ModelRegistry, n: int, **kw):
    return registry.register(
        "churn",
        f"/store/packages/churn/{n}",
        run_id=f"run-{n}",
        digest=f"digest-{n}",
        tags={"data_fingerprint": f"data-{n}"},
        **kw,
    )


def test_register_creates_a_version_linked_to_its_package_and_run(registry, tracking_uri):
    v1 = _register(registry, 1)
    assert (v1.name, v1.version, v1.digest) == ("churn", 1, "digest-1")
    assert v1.package_uri == "/store/packages/churn/1" and v1.run_id == "run-1"
    assert v1.aliases == ("challenger",)
    assert (
        v1.tags["data_fingerprint"] == "data-1"
        and v1.tags[RUN_TAG] == "run-1"
        and v1.tags[DIGEST_TAG] == "digest-1"
    )
    # what MLflow itself records (the UI and other tools read this)
    mv = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(
        "churn", "challenger"
    )
    assert mv.source == "/store/packages/churn/1"
    assert registry.get("churn", 1) == v1 and registry.get_by_alias("churn", "challenger") == v1

    v2 = _register(registry, 2)
    assert v2.version == 2 and registry.aliases("churn") == {"challenger": 2}


def test_registering_the_same_digest_again_returns_the_existing_version(registry):
    first = _register(registry, 1)
    _register(registry, 2)
    again = _register(registry, 1)
    assert again.version == first.version == 1 and again.aliases == ("challenger",)
    assert [v.version for v in registry.list_versions("churn")] == [1, 2]

    registry.promote("churn", 1)
    assert _register(registry, 1).aliases == ("champion",)  # the champion never becomes its own challenger
    assert registry.aliases("churn") == {"champion": 1}
    assert len(registry.list_versions("churn")) == 2


def test_a_registration_interrupted_before_its_alias_is_completed_on_retry(registry):
    _register(registry, 1, alias=None)
    assert registry.aliases("churn") == {}
    assert _register(registry, 1).aliases == ("challenger",)
    assert len(registry.list_versions("churn")) == 1


def test_promote_keeps_the_old_champion_as_previous_and_rollback_restores_it(registry):
    _register(registry, 1)
    registry.promote("churn", 1)
    assert registry.aliases("churn") == {"champion": 1}  # challenger left version 1 when it became champion

    _register(registry, 2)
    champion = registry.promote("churn", "2")
    assert champion.version == 2 and champion.aliases == ("champion",)
    assert registry.aliases("churn") == {"champion": 2, "previous": 1}
    assert registry.promote("churn", 2).version == 2  # repeating a promotion changes nothing
    assert registry.aliases("churn") == {"champion": 2, "previous": 1}

    restored = registry.rollback("churn")
    assert restored.version == 1 and restored.aliases == ("champion",)
    assert registry.aliases("churn") == {"champion": 1}
    with pytest.raises(
        RegistryError, match="no version with alias 'previous' for model 'churn'.*raymlops promote churn"
    ):
        registry.rollback("churn")  # a second rollback must not flip back to the version just rolled back


def test_list_versions_carries_aliases(registry):
    for n in (1, 2, 3):
        _register(registry, n)
    registry.promote("churn", 2)
    listed = {v.version: v.aliases for v in registry.list_versions("churn")}
    assert listed == {1: (), 2: ("champion",), 3: ("challenger",)}


def test_resolve_accepts_numbers_and_aliases(registry):
    _register(registry, 1)
    assert registry.resolve("churn", "v1").version == 1
    assert registry.resolve("churn", "challenger").version == 1
    with pytest.raises(
        RegistryError, match="no version with alias 'champion' for model 'churn'; run `raymlops promote churn"
    ):
        registry.resolve("churn", "champion")


def test_errors_name_the_model_version_or_alias_and_the_fix(registry):
    assert registry.get_by_alias("churn", "champion") is None  # no model yet: nothing serves, not an error
    for call in (
        lambda: registry.aliases("churn"),
        lambda: registry.list_versions("churn"),
        lambda: registry.get("churn", 1),
        lambda: registry.promote("churn", 1),
        lambda: registry.rollback("churn"),
    ):
        with pytest.raises(RegistryError, match="no registered model 'churn'.*raymlops run"):
            call()
    _register(registry, 1)
    assert registry.get_by_alias("churn", "champion") is None
    with pytest.raises(RegistryError, match="model 'churn' has no version 7"):
        registry.get("churn", 7)
    with pytest.raises(RegistryError, match="model 'churn' has no version 7"):
        registry.promote("churn", 7)
    with pytest.raises(RegistryError, match="model 'churn' has no version 7"):
        registry.set_alias("churn", "champion", 7)
    with pytest.raises(RegistryError, match="'x' is not a version number of model 'churn'"):
        registry.get("churn", "x")


def test_an_unusable_registry_uri_is_a_registry_error():
    with pytest.raises(RegistryError, match="cannot use bogus://x as the model registry.*set tracking_uri"):
        ModelRegistry("bogus://x")


def test_a_failing_backend_is_a_registry_error(registry, monkeypatch):
    # A real outage makes MLflow retry for about two minutes before failing; simulate the failure it ends with.
    def down(*args, **kwargs):
        raise MlflowException(
            "(sqlite3.OperationalError) unable to open database file", error_code="INTERNAL_ERROR"
        )

    monkeypatch.setattr(registry._client, "get_registered_model", down)
    with pytest.raises(
        RegistryError, match="failed while reading model 'churn'.*unable to open.*check tracking_uri"
    ):
        registry.aliases("churn")


def test_a_concurrent_duplicate_registration_converges_on_the_oldest_version(
    registry, tracking_uri, monkeypatch
):
    # Another controller created a version for this digest between our lookup and our create.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model("churn")
    client.create_model_version("churn", "/store/packages/churn/1", tags={DIGEST_TAG: "digest-1"})
    lookups = iter([None])
    real = registry._find_by_digest
    monkeypatch.setattr(
        registry, "_find_by_digest", lambda name, digest: next(lookups, None) or real(name, digest)
    )

    info = _register(registry, 1)
    assert info.version == 1 and info.aliases == ("challenger",)
    assert [v.version for v in registry.list_versions("churn")] == [1]  # our duplicate version 2 was deleted
