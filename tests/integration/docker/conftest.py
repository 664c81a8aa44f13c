"""Docker tests: a real engine, images built locally, CPU vLLM servers in containers.

Every test here talks to a real Docker engine with the real `docker` client (no stand-in).
The images come from scripts/docker_test_image.sh (Dockerfile.gb10 built on a local CPU vLLM
image); `.ci/run` starts the engine and builds them before pytest, and the fixtures build
them too when they are missing (a second build on one machine is a label check).

One vLLM container is shared by the session (`vllm_container`): the tests arm stalls through
its fault-plugin control file and release them; those that restart it (watch, watchdog.sh)
leave it serving again. Starting a CPU vLLM is CPU-heavy: on a shared machine run these
tests under the vLLM lock, like every other real-vLLM test.

REPRO_REQUIRE_DOCKER=1 (set by .ci/run) turns a missing engine into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import free_port
from tests.helpers_docker import BASE_AMD64, PREFIX, VllmContainer, build_images, docker, remove, require_docker
from tests.integration.conftest import require_vllm

# Secrets in the container's environment: no bundle file may contain them.
SECRET_ENV = {"HF_TOKEN": "hf_" + "Q7xKp2Lm9Rt4Vw8Yz3Bn6Cd1Fg5Hj0Sa", "MY_SERVICE_PASSWORD": "plain-value-31415"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the Docker tests and run them last (.ci/run builds their images while the other tests run)."""
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.fspath)).parents]
    for item in ours:
        item.add_marker(pytest.mark.docker)
    if ours:
        mine = set(map(id, ours))
        items[:] = [item for item in items if id(item) not in mine] + ours


@pytest.fixture(scope="session")
def docker_images() -> None:
    """The engine answers and the amd64 images exist (Dockerfile.gb10 on the CPU vLLM image)."""
    require_docker()
    require_vllm()
    build_images("gb10")


@pytest.fixture(scope="session")
def vllm_container(docker_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmContainer]:
    run_dir = tmp_path_factory.mktemp("docker-vllm")
    c = VllmContainer(name=f"{PREFIX}-vllm", port=free_port(), run_dir=run_dir,
                      storage=Path(f"/dev/shm/repro-docker-test-{os.getpid()}"), extra_env=dict(SECRET_ENV))
    try:
        c.start()
        yield c
    finally:
        c.remove()


@pytest.fixture
def idle_container(docker_images: None) -> Iterator[str]:
    """A running container with no vLLM in it (a `sleep`): what bad input must leave alone."""
    name = f"{PREFIX}-idle-{os.urandom(3).hex()}"
    docker("run", "-d", "--name", name, "--network", "none", BASE_AMD64, "sleep", "3600")
    try:
        yield name
    finally:
        remove(name)


@pytest.fixture
def stopped_container(docker_images: None) -> Iterator[str]:
    name = f"{PREFIX}-stopped-{os.urandom(3).hex()}"
    docker("run", "--name", name, "--network", "none", BASE_AMD64, "true")
    try:
        yield name
    finally:
        remove(name)
