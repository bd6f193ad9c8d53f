"""cluster.yaml pins Ray's access control instead of leaving it to defaults: token auth in every `ray start`, the
token copied to every node where Ray looks for it, the dashboard and Jobs API on loopback."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _ray_starts(cluster: dict) -> list[list[str]]:
    cmds = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    starts = [shlex.split(c) for c in cmds if "ray start" in c]
    assert len(starts) == 2, starts  # one for the head, one for the workers
    return starts


def test_every_ray_start_pins_token_auth(cluster):
    for argv in _ray_starts(cluster):
        # `RAY_AUTH_MODE=token ray start ...`: the environment of that very command, not a profile it may miss.
        assert argv[: argv.index("ray")].count("RAY_AUTH_MODE=token") == 1, argv


def test_the_dashboard_and_jobs_api_listen_on_loopback(cluster):
    head = next(a for a in _ray_starts(cluster) if "--head" in a)
    assert "--dashboard-host=127.0.0.1" in head
    every_command = "\n".join(sum((v for k, v in cluster.items() if k.endswith("_commands")), []))
    assert "0.0.0.0" not in every_command


def test_the_token_reaches_every_node_where_ray_reads_it(cluster):
    user = cluster["auth"]["ssh_user"]
    remote = f"/home/{user}/.ray/auth_token"  # Ray's default token path (~/.ray/auth_token) on the nodes
    assert cluster["file_mounts"].get(remote) == "~/.ray/auth_token"  # from `ray get-auth-token --generate`
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cluster["setup_commands"])


def test_it_validates_against_rays_cluster_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before it calls the cloud: merge the provider's defaults, then validate against
    # ray-schema.json (a misspelt or misplaced key fails here).
    config = prepare_config(dict(cluster))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]
    with pytest.raises(Exception, match="idle_timeout_minute"):
        validate_config(prepare_config({**cluster, "idle_timeout_minute": 5}))
