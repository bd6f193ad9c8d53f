"""A starter project for ``raymlops init DIR``: a pipeline config, a feature repo and small example data.

The config and the feature repo are the shipped examples (``raymlops.example_configs()``: churn.yaml, features.yaml) with
their data locations pointed into the project, comments kept; the data comes from the same generators as the demo
(``raymlops.data.synthetic``, ``raymlops.features.example``). Paths in the written files are relative to DIR:
commands run from there. Nothing is written when a file would be overwritten, unless ``force``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from raymlops.errors import ConfigError

__all__ = ["CONFIG_NAME", "FEATURES_NAME", "StarterProject", "template_text", "write_starter"]

CONFIG_NAME = "pipeline.yaml"
FEATURES_NAME = "features.yaml"
LANDING = "data/landing"
FEATURE_DATA = "data/features"

# (pattern, replacement) applied to each template; each pattern must match exactly once, so a template that
# changed shape fails loudly here (and in tests/unit/test_cli.py) instead of writing a config that points nowhere.
_CONFIG_EDITS = [
    (r"(?m)^(  source: )\S+", rf"\g<1>./{LANDING}"),
]
_FEATURES_EDITS = [
    (r"\./\.raymlops/feature-data", f"./{FEATURE_DATA}"),
]
_CONFIG_TAIL = f"""
# The feature repo written beside this file: `raymlops features list --repo {FEATURES_NAME}`,
# `raymlops features materialize --repo {FEATURES_NAME}`. To train on point-in-time features joined to labelled
# entity rows instead of data.source (and to serve by entity key), uncomment:
# features:
#   repo: {FEATURES_NAME}
#   service: churn_model
#   label_source: ./{FEATURE_DATA}/labels
"""


@dataclass
class StarterProject:
    """What ``write_starter`` wrote: the project directory, the files (config first) and the example data."""

    directory: str
    config: str
    feature_repo: str
    files: list[str] = field(default_factory=list)
    rows: int = 0


def template_text(name: str) -> str:
    """The shipped example ``name`` (churn.yaml, features.yaml), as ``raymlops.example_configs()`` finds it."""
    from raymlops import example_configs

    path = example_configs().get(name)
    if path is None or not path.is_file():
        raise ConfigError(f"the example config {name} is not installed with raymlops (raymlops/configs/); "
                          "reinstall raymlops")
    return path.read_text(encoding="utf-8")


def _edit(text: str, edits: list[tuple[str, str]], name: str, count: int = 0) -> str:
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, count=count)
        if n == 0:
            raise ConfigError(f"the example {name} no longer has the key raymlops init rewrites ({pattern!r}); "
                              "report this as a bug")
    return text


def _occupied(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def write_starter(directory: str | Path, *, force: bool = False, rows_per_day: int = 500, days: int = 3,
                  customers: int = 200, seed: int = 0) -> StarterProject:
    """Write DIR/pipeline.yaml, DIR/features.yaml, example data under DIR/data; refuse (ConfigError naming the
    path) to overwrite an existing file or non-empty data directory unless ``force``."""
    from raymlops.data.synthetic import generate
    from raymlops.features.example import generate_example

    root = Path(directory)
    config, features = root / CONFIG_NAME, root / FEATURES_NAME
    # Read and edit the templates first: a broken template must not leave half a project behind.
    texts = {config: _edit(template_text("churn.yaml"), _CONFIG_EDITS, "churn.yaml", count=1) + _CONFIG_TAIL,
             features: _edit(template_text("features.yaml"), _FEATURES_EDITS, "features.yaml")}
    if not force:
        for path in (config, features, root / LANDING, root / FEATURE_DATA):
            if _occupied(path):
                raise ConfigError(f"{path} already exists; raymlops init does not overwrite it: pass --force to "
                                  "replace the starter files, or choose an empty directory")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file; give raymlops init a directory")
    root.mkdir(parents=True, exist_ok=True)
    for path, text in texts.items():
        path.write_text(text, encoding="utf-8")
    landed = generate(str(root / LANDING), rows_per_day=rows_per_day, days=days, seed=seed)
    feature_files = generate_example(str(root / FEATURE_DATA), customers=customers, days=max(days, 3), seed=seed)
    return StarterProject(directory=str(root), config=str(config), feature_repo=str(features),
                          files=[str(config), str(features), *landed.files, *feature_files.values()],
                          rows=landed.rows)
