"""One controller per pipeline, on the real actor (local Ray): a second controller on the same storage is refused
with the holder's name, ``take_over`` takes the lease (the old holder stops at its next renewal), and a stopped
controller releases it. No pipeline run, no serving: a controller with nothing to do."""

from __future__ import annotations

import shutil
import time

import pytest

from raymlops.config import load_config
from raymlops.control.actor import call, get_controller, start_controller, stop_controller
from raymlops.control.statefile import Lease, lease_uri, read_lease
from raymlops.errors import ControllerError
from tests.serving_helpers import wait_for

pytestmark = pytest.mark.slow


def test_a_second_controller_is_refused_until_it_takes_the_lease_over(ray_session, _mlflow_template, tmp_path):
    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    cfg = load_config(None, [
        f"storage_uri={tmp_path / 'store'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "name=leased",
        f"data.source={tmp_path / 'landing'}", "controller.poll_interval_s=0.3", "triggers.poll_interval_s=0.3",
        "triggers.new_data=false", "triggers.on_drift=false", "monitoring.interval_s=3600",
        "pre_exposure.enabled=false",
    ])
    # A controller of the same pipeline on another cluster sharing this storage holds the lease.
    elsewhere = Lease(lease_uri(cfg), "actor-elsewhere", "controller actor-elsewhere (pid 9 on other-host)", 120.0)
    elsewhere.acquire(cfg.name)
    with pytest.raises(ControllerError) as refused:
        start_controller(cfg)
    assert "other-host" in str(refused.value) and "--take-over" in str(refused.value)
    assert get_controller(cfg) is None  # nothing was started

    start_controller(cfg, take_over=True)
    try:
        wait_for(lambda: any(e["kind"] == "lease_taken_over" for e in call(cfg, "events", 0)), 30,
                 "the take-over to be logged")
        held = read_lease(cfg)
        assert held is not None and held.live(time.time()) and "other-host" not in held.holder
        with pytest.raises(ControllerError, match="lost its lease"):
            elsewhere.renew()  # the old holder learns at its next renewal and stops acting
        renewed = held.renewed_at
        wait_for(lambda: read_lease(cfg).renewed_at > renewed, 30, "the lease to be renewed")
    finally:
        stop_controller(cfg)
    assert read_lease(cfg) is None  # released: the next controller starts at once
