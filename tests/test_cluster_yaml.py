"""cluster.yaml passes Ray's own launcher validation (as `ray up` does: prepare, then validate),
and it, the Dockerfile and docs/cluster.md agree on what a deployment needs: the image, the
shared mount, the paths, the ports, the GPU options and token authentication.

Files are only parsed: no docker, no AWS, no network.
"""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
MOUNT = "/mnt/shared"  # the EFS mount, the same path on the host and in the container
HEAD_PORT = 6379
DASHBOARD_PORT = 8265


def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def cluster_comments() -> str:
    return "\n".join(
        line.strip().lstrip("#").strip()
        for line in (REPO / "cluster.yaml").read_text().splitlines()
        if line.strip().startswith("#")
    )


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def docs() -> str:
    return (REPO / "docs" / "cluster.md").read_text()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def run_options(config: dict, node_type: str) -> list[str]:
    """The docker run options the launcher gives a node of ``node_type``, split into words.

    As in Ray 2.60: ``run_options`` + ``head_run_options`` on the head; on a worker,
    ``run_options`` + ``worker_run_options`` of the global docker section updated with the node
    type's own ``docker`` section (autoscaler._get_node_specific_docker_config, then
    DockerCommandRunner.run_init).
    """
    docker = dict(config["docker"])
    if node_type == config["head_node_type"]:
        extra = docker.get("head_run_options", [])
    else:
        docker.update(config["available_node_types"][node_type].get("docker", {}))
        extra = docker.get("worker_run_options", [])
    return shlex.split(" ".join(docker.get("run_options", []) + extra))


def values_of(words: list[str], *names: str) -> list[str]:
    """The word after each occurrence of one of ``names`` (``-e A=1 -e B=2`` -> A=1, B=2)."""
    return [value for word, value in zip(words, words[1:], strict=False) if word in names]


def container_env(options: list[str]) -> dict[str, str]:
    return dict(value.partition("=")[::2] for value in values_of(options, "-e", "--env"))


def documented_commands(text: str, program: str) -> list[list[str]]:
    """Each ``program ...`` command in ``text`` (backslash continuations joined), as words."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip().lstrip("#").strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(program)]


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def ray_version_of_base_image() -> str:
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile(), flags=re.M)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-gpu", base)
    assert match, f"base image {base}: want rayproject/ray:<version>-py3XX-gpu"
    return match.group(1)


def image_names_in_dockerfile() -> set[str]:
    return set(re.findall(r"docker (?:build -t|push) (\S+)", dockerfile()))


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster()))


def test_the_image_ray_version_is_the_installed_and_pinned_one():
    ray_version = ray_version_of_base_image()
    # `ray up` refuses a cluster whose Ray differs from the launching machine's
    assert ray_version == version("ray")
    pin = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("ray["))
    assert Version(ray_version) in SpecifierSet(pin.split("]", 1)[1])
    # the build itself fails if pip moved Ray away from the base image's version
    assert f"ray.__version__ == '{ray_version}'" in dockerfile()
    assert "ray-ml" not in dockerfile()  # the ray-ml images stopped at 2.49


def test_cluster_yaml_runs_the_image_the_dockerfile_documents_on_every_node():
    config = cluster()
    image = config["docker"]["image"]
    assert image_names_in_dockerfile() == {image}  # docker build -t / docker push
    assert f"docker build -t {image} ." in docs() and f"docker push {image}" in docs()
    assert image.rsplit(":", 1)[1] == pyproject()["project"]["version"]
    assert f'org.opencontainers.image.version="{pyproject()["project"]["version"]}"' in (
        dockerfile()
    )
    # one image for the head and the workers: the same Ray and torch everywhere
    assert not {"head_image", "worker_image"} & set(config["docker"])
    for spec in config["available_node_types"].values():
        assert "worker_image" not in spec.get("docker", {})


def test_the_image_installs_every_package_and_no_gpu_faiss():
    text = dockerfile()
    packages = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY .*? (\S+) \./\1$", text, flags=re.M))
    assert copied == {p.rstrip("*") for p in packages}
    assert re.search(r"^COPY .*pyproject\.toml README\.md \./$", text, flags=re.M)
    assert "gpu" not in pyproject()["project"]["optional-dependencies"]
    setup = cluster().get("setup_commands", []) + cluster().get("worker_setup_commands", [])
    instructions = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    for source in [instructions, *setup]:
        assert "faiss-gpu" not in source and "uninstall" not in source
    # the image has everything: setup only re-registers the synced checkout
    assert all("--no-deps" in c for c in setup if "pip install" in c)
    assert set(cluster()["file_mounts"]) == {"/home/ray/project"}
    assert re.search(r"^WORKDIR /home/ray/project$", text, flags=re.M)


def test_efs_is_mounted_owned_by_the_container_user_and_bind_mounted():
    config = cluster()
    init = config["initialization_commands"]
    (mount,) = [shlex.split(c.split("||")[-1]) for c in init if "mount -t nfs4" in c]
    options = set(flag(mount, "-o").split(","))
    assert options >= {
        "nfsvers=4.1",
        "rsize=1048576",
        "wsize=1048576",
        "hard",
        "timeo=600",
        "retrans=2",
        "noresvport",
    }
    assert mount[-2].endswith(".efs.us-west-2.amazonaws.com:/") and mount[-1] == MOUNT
    assert any(c.startswith(f"mountpoint -q {MOUNT} ||") for c in init)  # idempotent
    # a fresh EFS root belongs to root; the rayproject images run as ray (uid 1000, gid 100)
    assert any(f"chown 1000:100 {MOUNT} " in c for c in init)
    for node_type in config["available_node_types"]:
        words = run_options(config, node_type)
        assert f"{MOUNT}:{MOUNT}" in values_of(words, "-v", "--volume")


def test_security_group_opens_nfs():
    group = cluster()["provider"]["security_group"]
    assert group["GroupName"] and f"--group-name {group['GroupName']}" in docs()
    nfs = [
        rule
        for rule in group["IpPermissions"]
        if rule["IpProtocol"] == "tcp" and rule["FromPort"] <= 2049 <= rule["ToPort"]
    ]
    assert nfs and all(r["IpRanges"] or r.get("UserIdGroupPairs") for r in nfs)


def test_documented_commands_use_the_shared_paths_and_ports():
    config = cluster()
    env = container_env(run_options(config, config["head_node_type"]))
    submits = [
        words
        for text in (docs(), cluster_comments())
        for words in documented_commands(text, "ray job submit")
    ]
    assert len(submits) == 2  # docs/cluster.md and the header of cluster.yaml
    for words in submits:
        assert flag(words, "--address") == f"http://127.0.0.1:{DASHBOARD_PORT}"
        assert words[words.index("--") + 1 :][:3] == ["python", "-m", "orchestrator.sweep"]
        assert flag(words, "--data-root") == env["UNIC_DATA_ROOT"] == f"{MOUNT}/data"
        assert flag(words, "--output") == f"{MOUNT}/results"
    init = " ".join(config["initialization_commands"])
    assert f"{MOUNT}/data" in init and f"{MOUNT}/results" in init  # created, owned by 1000
    assert f"localhost:{DASHBOARD_PORT}" in cluster_comments()
    assert "dashboard-host" not in (REPO / "cluster.yaml").read_text()  # `ray dashboard` only
    assert "dashboard-port" not in (REPO / "cluster.yaml").read_text()  # Ray's default 8265
    assert config["head_start_ray_commands"][-1].endswith(
        f"ray start --head --port={HEAD_PORT} --autoscaling-config=~/ray_bootstrap_config.yaml"
    )
    assert config["worker_start_ray_commands"][-1].endswith(
        f"ray start --address=$RAY_HEAD_IP:{HEAD_PORT}"
    )
    pytest.importorskip("ray")
    from ray._private import ray_constants

    assert ray_constants.DEFAULT_DASHBOARD_PORT == DASHBOARD_PORT


def test_gpu_workers_declare_their_resources_and_see_their_gpus():
    config = cluster()
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert workers
    for name, spec in workers.items():
        # the sweep plans from this file before any worker exists: `{}` would leave it blind
        assert spec["resources"].get("CPU", 0) > 0, name
        options = run_options(config, name)
        if spec["resources"].get("GPU", 0) > 0:
            assert "--gpus all" in " ".join(options), name
        else:
            assert "--gpus" not in options, name
    assert any(spec["resources"].get("GPU", 0) > 0 for spec in workers.values())
    head = run_options(config, config["head_node_type"])
    assert "--gpus" not in head  # the head is a CPU instance


def test_token_auth_is_on_with_one_token_on_every_node():
    config = cluster()
    envs = [container_env(run_options(config, t)) for t in config["available_node_types"]]
    assert all(env.get("RAY_AUTH_MODE") == "token" for env in envs)
    paths = {env.get("RAY_AUTH_TOKEN_PATH") for env in envs}
    assert len(paths) == 1
    (path,) = paths
    assert path.startswith(f"{MOUNT}/")  # on EFS: every node reads the same token
    # created on the head before `ray start --head`, which in token mode needs it
    assert any(path in c and "test -s" in c for c in config["head_setup_commands"])
    # no start command overrides the mode the containers run with
    for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "RAY_AUTH" not in c
    # the client side: the documented way to get the token and to send it
    text = docs()
    assert f"ray rsync-down cluster.yaml {path} " in text
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" in text
