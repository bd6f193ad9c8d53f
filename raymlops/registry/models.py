"""Model versions and aliases in the MLflow model registry.

A registered model version points at a model package (its ``source`` is the package URI) and carries tags that
link it to the pipeline run, the data and the package digest. Registering a package that verifies against its
digest writes its MLflow descriptor (``MLmodel``, ``raymlops.registry.mlmodel``) first, so
``mlflow.pyfunc.load_model("models:/NAME@champion")`` and ``mlflow models serve`` work on every version; a package
that does not verify is still registered (loading refuses it), tagged with why it has no ``MLmodel``.

Aliases say what each version is for: ``challenger`` (registered, waiting for its canary), ``champion`` (serving),
``previous`` (the champion before the last promotion: the rollback target).

Always an explicit ``MlflowClient``: never MLflow's process-wide tracking URI, so two registries can coexist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from raymlops.errors import RaymlopsError, RegistryError
from raymlops.registry.mlmodel import has_mlmodel, write_mlmodel

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"

DIGEST_TAG = "raymlops.package_digest"
RUN_TAG = "raymlops.mlflow_run_id"  # the MLflow run that registered it (the register step)
NO_MLMODEL_TAG = "raymlops.mlmodel_missing"  # why a version's package has no MLmodel (it did not verify)

_PAGE = 1000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered model version: its package, the package digest, its aliases and tags."""

    name: str
    version: int
    digest: str
    package_uri: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None


class ModelRegistry:
    """Registered models, versions and aliases on one MLflow registry (``registry_uri`` defaults to tracking)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        try:
            self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        except MlflowException as err:  # e.g. an unsupported scheme, raised when the store is picked
            raise RegistryError(
                f"cannot use {self.registry_uri} as the model registry: {err.message}; set tracking_uri to e.g. "
                "sqlite:///./.raymlops/mlflow.db or http://mlflow-host:5000"
            ) from None

    # ----------------------------------------------------------------------------------------- versions
    def register(
        self,
        name: str,
        package_uri: str,
        *,
        run_id: str | None,
        digest: str,
        tags: Mapping[str, Any],
        alias: str | None = CHALLENGER,
    ) -> ModelVersionInfo:
        """Register a package as a new version of ``name`` and point ``alias`` at it.

        Idempotent by digest: if a version of ``name`` already holds this digest it is returned and no new version
        is made (a restarted controller registers again safely); ``alias`` still moves to it, unless that version
        is the champion (the champion must never become its own challenger).
        """
        existing = self._find_by_digest(name, digest)
        if existing is None:
            missing = _try_mlmodel(package_uri, digest)
            with self._errors(f"registering {package_uri} as a version of model '{name}'"):
                try:
                    self._client.create_registered_model(name)
                except MlflowException as err:
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                all_tags = {**{str(k): str(v) for k, v in tags.items()}, DIGEST_TAG: digest}
                if run_id:
                    all_tags[RUN_TAG] = run_id
                if missing:
                    all_tags[NO_MLMODEL_TAG] = missing[:5000]
                mv = self._client.create_model_version(
                    name, package_uri, run_id=run_id or None, tags=all_tags
                )
            existing = self._converge_duplicates(name, digest, int(mv.version))
        if alias and alias not in existing.aliases and CHAMPION not in existing.aliases:
            self.set_alias(name, alias, existing.version)
            existing = self.get(name, existing.version)
        return existing

    def add_mlmodel(self, name: str, ref: int | str) -> bool:
        """Write the MLflow descriptor of a version registered without one (before raymlops wrote them);
        False when it has one. ``PackageError`` when its package does not verify against the registered digest."""
        info = self.resolve(name, ref)
        if has_mlmodel(info.package_uri):
            return False
        written = write_mlmodel(info.package_uri, info.digest)
        if NO_MLMODEL_TAG in info.tags:
            with self._errors(f"untagging version {info.version} of model '{name}'", name=name, version=info.version):
                self._client.delete_model_version_tag(name, str(info.version), NO_MLMODEL_TAG)
        return written

    def get(self, name: str, version: int | str) -> ModelVersionInfo:
        """One version of ``name``; RegistryError when the model or the version does not exist."""
        v = _version_number(name, version)
        with self._errors(f"reading version {v} of model '{name}'", name=name, version=v):
            return _info(self._client.get_model_version(name, str(v)))

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version ``alias`` points at, or None when the model or the alias does not exist (yet)."""
        aliases = self.find_aliases(name)
        if aliases is None or alias not in aliases:
            return None
        return self.get(name, aliases[alias])

    def resolve(self, name: str, ref: int | str) -> ModelVersionInfo:
        """A version by number (``3``, ``"3"``, ``"v3"``) or by alias; RegistryError if there is none."""
        text = str(ref)
        if text.isdigit() or (text[:1] in "vV" and text[1:].isdigit()):
            return self.get(name, text.lstrip("vV"))
        info = self.get_by_alias(name, text)
        if info is None:
            self._require_model(name)
            raise RegistryError(
                f"no version with alias '{text}' for model '{name}'; "
                f"run `raymlops promote {name} VERSION` or pass a version number"
            )
        return info

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of ``name``, oldest first, with its aliases; RegistryError when the model is unknown."""
        aliases = self._require_model(name)
        by_version: dict[int, list[str]] = {}
        for alias, v in aliases.items():
            by_version.setdefault(v, []).append(alias)
        out = []
        # search_model_versions does not fill aliases (MLflow skips them for speed): add them from the model.
        for mv in self._search(f"name = {_literal(name)}"):
            info = _info(mv)
            out.append(replace(info, aliases=tuple(sorted(by_version.get(info.version, ())))))
        return sorted(out, key=lambda i: i.version)

    # ------------------------------------------------------------------------------------------ aliases
    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number for ``name``; RegistryError when the model is unknown."""
        return self._require_model(name)

    def set_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        v = _version_number(name, version)
        with self._errors(f"setting alias '{alias}' of model '{name}' to version {v}", name=name, version=v):
            self._client.set_registered_model_alias(name, alias, str(v))

    def tag_version(self, name: str, version: int | str, key: str, value: str) -> None:
        """Set one tag on a version (e.g. a controller decision, so it stays in the version's lineage)."""
        v = _version_number(name, version)
        with self._errors(f"tagging version {v} of model '{name}'", name=name, version=v):
            self._client.set_model_version_tag(name, str(v), key, value[:5000])

    def promote(self, name: str, version: int | str) -> ModelVersionInfo:
        """Make ``version`` the champion; the old champion becomes ``previous``; ``challenger`` is dropped from it.

        Safe to repeat after a crash: each step converges (previous first, then champion, then challenger).
        """
        target = self.get(name, version)
        aliases = self.aliases(name)
        old = aliases.get(CHAMPION)
        if old is not None and old != target.version:
            self.set_alias(name, PREVIOUS, old)
        if old != target.version:
            self.set_alias(name, CHAMPION, target.version)
        if aliases.get(CHALLENGER) == target.version:
            self._delete_alias(name, CHALLENGER)
        return self.get(name, target.version)

    def rollback(self, name: str) -> ModelVersionInfo:
        """Make ``previous`` the champion again and drop ``previous`` (a second rollback must not flip back)."""
        aliases = self.aliases(name)
        prev = aliases.get(PREVIOUS)
        if prev is None:
            raise RegistryError(
                f"no version with alias '{PREVIOUS}' for model '{name}': nothing to roll back to; "
                f"promote a known good version with `raymlops promote {name} VERSION`"
            )
        self.set_alias(name, CHAMPION, prev)
        self._delete_alias(name, PREVIOUS)
        return self.get(name, prev)

    # ------------------------------------------------------------------------------------------ helpers
    def _find_by_digest(self, name: str, digest: str) -> ModelVersionInfo | None:
        aliases = self.find_aliases(name)
        if aliases is None:
            return None
        query = f"name = {_literal(name)} and tags.`{DIGEST_TAG}` = {_literal(digest)}"
        found = [_info(mv) for mv in self._search(query)]
        if not found:
            return None
        first = min(found, key=lambda i: i.version)
        return replace(first, aliases=tuple(sorted(a for a, v in aliases.items() if v == first.version)))

    def _converge_duplicates(self, name: str, digest: str, created: int) -> ModelVersionInfo:
        """Two concurrent registrations of one digest both create a version; the oldest wins, ours is deleted."""
        winner = self._find_by_digest(name, digest)
        if winner is None:  # pragma: no cover - the version we just created vanished
            raise RegistryError(
                f"version {created} of model '{name}' disappeared right after it was created; retry"
            )
        if winner.version != created:
            with self._errors(f"deleting duplicate version {created} of model '{name}'"):
                self._client.delete_model_version(name, str(created))
        return winner

    def find_aliases(self, name: str) -> dict[str, int] | None:
        """The aliases of model ``name`` (alias -> version), or None when no such model is registered."""
        try:
            model = self._client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise self._wrap(err, f"reading model '{name}'") from None
        except Exception as err:
            raise self._wrap(err, f"reading model '{name}'") from None
        return {alias: int(v) for alias, v in (model.aliases or {}).items()}

    def _require_model(self, name: str) -> dict[str, int]:
        aliases = self.find_aliases(name)
        if aliases is None:
            raise self._no_model(name)
        return aliases

    def _no_model(self, name: str) -> RegistryError:
        return RegistryError(
            f"no registered model '{name}' in {self.registry_uri}; check the name, or register one by running "
            "the pipeline (`raymlops run CONFIG`)"
        )

    def _delete_alias(self, name: str, alias: str) -> None:
        with self._errors(f"removing alias '{alias}' of model '{name}'", name=name):
            self._client.delete_registered_model_alias(name, alias)

    def _search(self, filter_string: str) -> Iterator[Any]:
        token = None
        while True:
            with self._errors(f"searching model versions ({filter_string})"):
                page = self._client.search_model_versions(filter_string, max_results=_PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    @contextmanager
    def _errors(self, doing: str, *, name: str | None = None, version: int | None = None) -> Iterator[None]:
        try:
            yield
        except RegistryError:
            raise
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST" and name is not None:
                if self.find_aliases(name) is None:
                    raise self._no_model(name) from None
                if version is not None:
                    raise RegistryError(
                        f"model '{name}' has no version {version}; list its versions with `raymlops status`"
                    ) from None
            if err.error_code == "INVALID_PARAMETER_VALUE":
                raise RegistryError(f"the registry refused {doing}: {err.message}") from None
            raise self._wrap(err, doing) from None
        except Exception as err:  # connection and database errors surface with backend-specific types
            raise self._wrap(err, doing) from None

    def _wrap(self, err: Exception, doing: str) -> RegistryError:
        message = getattr(err, "message", None) or str(err)
        return RegistryError(
            f"MLflow registry at {self.registry_uri} failed while {doing}: {message}; check tracking_uri in the "
            "config and that the MLflow server or database is reachable"
        )


def _try_mlmodel(package_uri: str, digest: str) -> str | None:
    """Write the package's MLmodel; None when written or present, else why not (the package did not verify)."""
    try:
        write_mlmodel(package_uri, digest)
    except RaymlopsError as err:
        logger.warning("version registered without an MLmodel (mlflow.pyfunc cannot load it): %s", err)
        return str(err)
    return None


def _info(mv: Any) -> ModelVersionInfo:
    tags = dict(mv.tags or {})
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        digest=tags.get(DIGEST_TAG, ""),
        package_uri=mv.source,
        aliases=tuple(sorted(mv.aliases or ())),
        tags=tags,
        run_id=mv.run_id or None,
    )


def _version_number(name: str, version: int | str) -> int:
    text = str(version).strip().lstrip("vV")
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(
            f"'{version}' is not a version number of model '{name}'; versions are 1, 2, 3, ..."
        )
    return int(text)


def _literal(value: str) -> str:
    # MLflow's filter grammar has no escape inside a string literal, but accepts either quote character.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise RegistryError(
        f"{value!r} holds both quote characters; use a model name or tag value without quotes"
    )
