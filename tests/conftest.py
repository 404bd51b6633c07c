"""Shared fixtures."""

import gc
import glob
import os
import tempfile
import threading

import pytest


@pytest.fixture(scope="module")
def nothing_left_behind():
    """After the module's tests: none of this process's workspaces (directories or mounts),
    cgroups or containers are left on the host. Only what this process made is looked at."""
    yield
    from mamba_agent.sandboxes.base import owner_tag
    from mamba_agent.sandboxes.docker import OWNER_LABEL
    from mamba_agent.sandboxes.workspace import PREFIX

    gc.collect()  # dropped tools and workspaces are removed by their finalizers
    for thread in threading.enumerate():
        if thread.name == "sandbox-close":  # tools/run.py closes sandboxes in the background
            thread.join(10)
    mine = f"{PREFIX}{owner_tag()}-"
    assert glob.glob(os.path.join(tempfile.gettempdir(), mine + "*")) == []
    with open("/proc/self/mountinfo") as f:
        assert [line for line in f if mine in line] == []
    assert glob.glob(f"/sys/fs/cgroup/*/mamba-agent-{owner_tag()}-*") == []
    if os.environ.get("DOCKER_HOST"):
        import docker

        client = docker.from_env()
        try:
            left = client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_tag()}"})
        finally:
            client.close()
        assert left == []
