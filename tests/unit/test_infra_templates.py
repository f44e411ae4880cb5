"""The fleet's container image and Prefect work-pool templates, checked offline (infra/).

No container runtime or cluster exists where these tests run: the image is never built and no Job is
ever created. What is checked instead: the work-pool templates as Prefect's server accepts them and
as its template machinery renders them; the rendered Kubernetes Job against the Kubernetes API's JSON
schemas (kubernetes-validate, strict: an unknown field fails); that the worker's own API URL and
auth string are not copied into a container in clear; the Dockerfile's sources, pins and entry; and
the entry script itself, run with ``sh``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import jsonschema
import kubernetes_validate
import prefect
import pytest
import yaml
from docker.errors import DockerException
from prefect.client.schemas.objects import FlowRun
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.utilities.schema_tools import validate as prefect_validate
from prefect.utilities.schema_tools.validation import ValidationError as PrefectValidationError
from prefect.workers.base import BaseJobConfiguration

from tests.conftest import REPO

INFRA = REPO / "infra"
POOLS = {"docker": INFRA / "prefect" / "docker-pool.json", "kubernetes": INFRA / "prefect" / "kubernetes-pool.json"}
DOCKERFILE = INFRA / "docker" / "Dockerfile"
ENTRYPOINT = INFRA / "docker" / "entrypoint.sh"
DVC_SYSTEM_CONFIG = INFRA / "dvc" / "config"
# The Kubernetes releases the Job is checked against: the oldest and newest minor versions whose
# schemas kubernetes-validate 1.37.0 ships among those still served by the main cloud providers.
K8S_VERSIONS = ("1.33", "1.34", "1.35", "1.36", "1.37")
# Kubernetes' resource quantity grammar (apimachinery's resource.Quantity): a decimal number and an
# optional binary (Ki..Ei) or decimal (m, k..E, or an exponent) suffix. The JSON schemas accept any
# string as a quantity, so the template's own strings are checked against the grammar here.
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE]|[eE][+-]?[0-9]+)?$")
# What a deployment's job variables set in these tests: a flow run of the retrain deployment.
RUN_VALUES = {"name": "yolo-retrain", "labels": {"app.kubernetes.io/part-of": "yolo-pipeline"}}


def load_pool(kind: str) -> dict[str, Any]:
    """The base job template of one work pool, as `prefect work-pool create` reads it."""
    return json.loads(POOLS[kind].read_text())


def bundled_default_template(kind: str) -> dict[str, Any]:
    """The worker type's default base job template, as Prefect 3.8.8 bundles it for its server."""
    views = Path(prefect.__file__).parent / "server" / "api" / "collections_data" / "views"
    metadata = json.loads((views / "aggregate-worker-metadata.json").read_text())
    return metadata[f"prefect-{kind}"][kind]["default_base_job_configuration"]


class _NoServer:
    """Stands in for Prefect's client: rendering these templates must not need a server (no block or
    variable references), so any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rendering the template used the Prefect client ({name})")


class KubernetesJobConfiguration(BaseJobConfiguration):
    """The job configuration keys prefect-kubernetes 0.8.0's worker reads, beyond the base ones."""

    env: dict[str, str | None] | list[dict[str, Any]] = {}  # noqa: RUF012 (pydantic copies defaults)
    namespace: str = "default"
    job_manifest: dict[str, Any]
    job_watch_timeout_seconds: int | None = None
    pod_watch_timeout_seconds: int = 60
    stream_output: bool = True


class DockerJobConfiguration(BaseJobConfiguration):
    """The job configuration keys prefect-docker 0.7.4's worker reads that these templates set."""

    image: str
    image_pull_policy: str | None = None
    networks: list[str] = []  # noqa: RUF012
    auto_remove: bool = False
    stream_output: bool = True
    mem_limit: str | None = None
    volumes: list[str] = []  # noqa: RUF012
    container_create_kwargs: dict[str, Any] | None = None


CONFIGURATIONS: dict[str, type[BaseJobConfiguration]] = {
    "docker": DockerJobConfiguration,
    "kubernetes": KubernetesJobConfiguration,
}


def render(kind: str, template: dict[str, Any], values: dict[str, Any]) -> Any:
    """The job configuration a worker builds for a flow run: Prefect's own templating
    (``BaseJobConfiguration.from_template_and_values``: variable defaults, then the deployment's
    values, placeholders replaced, unset ones dropped)."""
    cls = CONFIGURATIONS[kind]
    return asyncio.run(cls.from_template_and_values(template, values, client=_NoServer()))  # type: ignore[arg-type]


def render_job(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Kubernetes Job manifest rendered from ``template``, as the API server would receive it.

    prefect-kubernetes' worker refuses a template whose pod spec lacks ``parallelism: 1`` and
    ``completions: 1`` (``_get_base_job_manifest``, checked by ``_validate_job_manifest``), though
    they belong to the Job spec, not the pod spec: Prefect's own default template carries them there
    too, and the API server drops unknown fields (with a warning) unless asked for strict field
    validation, which the worker does not ask for. They are removed here, and nothing else, so that
    the strict schema checks every other field.
    """
    config = render("kubernetes", template, {**RUN_VALUES, **(values or {})})
    job = copy.deepcopy(config.job_manifest)
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    return job


def container(job: dict[str, Any]) -> dict[str, Any]:
    """The flow run's container (the worker requires it first and named ``prefect-job``)."""
    first = job["spec"]["template"]["spec"]["containers"][0]
    assert first["name"] == "prefect-job"
    return first


def dvc_cache_dir() -> str:
    """The cache folder the image's DVC system config names."""
    match = re.search(r"^\s*dir\s*=\s*(\S+)\s*$", DVC_SYSTEM_CONFIG.read_text(), re.MULTILINE)
    assert match, f"{DVC_SYSTEM_CONFIG} sets no cache dir"
    return match.group(1)


# --- the templates as Prefect's server takes them --------------------------------------------------


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_server_accepts_template_and_every_placeholder_is_declared(kind: str) -> None:
    template = load_pool(kind)
    # The server's own check (`validate_base_job_template`): every {{ var }} is a declared variable.
    WorkPoolCreate(name=f"yolo-{kind}", type=kind, base_job_template=template)
    # ... and the same read here independently, so a broken server check cannot pass it.
    used = set(re.findall(r"{{\s*([\w.\-]+)\s*}}", json.dumps(template["job_configuration"])))
    assert used <= set(template["variables"]["properties"]), used - set(template["variables"]["properties"])
    assert {"gpu_count", "image"} <= used


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_undeclared_placeholder_is_refused(kind: str) -> None:
    template = load_pool(kind)
    template["job_configuration"]["name"] = "{{ gpus }}"
    with pytest.raises(ValueError, match="gpus"):
        WorkPoolCreate(name=f"yolo-{kind}", type=kind, base_job_template=template)


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_variables_schema_is_json_schema_and_defaults_conform(kind: str) -> None:
    variables = load_pool(kind)["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    defaults = {name: spec["default"] for name, spec in variables["properties"].items() if "default" in spec}
    jsonschema.Draft202012Validator(variables).validate(defaults)
    assert defaults["gpu_count"] == 1


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_job_configuration_sets_only_what_the_worker_reads(kind: str) -> None:
    # A key the worker's configuration class lacks is dropped silently: the GPU request or the cache
    # mount would vanish. The bundled default template lists the keys; prefect-docker 0.7.4 adds
    # container_create_kwargs (passed to docker-py's containers.create), the only way to a GPU there.
    known = set(bundled_default_template(kind)["job_configuration"])
    if kind == "docker":
        known.add("container_create_kwargs")
    assert set(load_pool(kind)["job_configuration"]) <= known


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("kubernetes", {"gpu_count": "one"}),
        ("kubernetes", {"gpu_count": -1}),
        ("kubernetes", {"memory_limit": "32 GB"}),
        ("kubernetes", {"shm_size": "lots"}),
        ("kubernetes", {"dvc_cache_claim": "Yolo_Cache"}),
        ("docker", {"gpu_count": 0}),
        ("docker", {"shm_size": "8Gi"}),
        ("docker", {"prefect_secrets_dir": "relative/dir"}),
    ],
)
def test_deployment_job_variables_out_of_schema_are_refused(kind: str, values: dict[str, Any]) -> None:
    # What the server runs on a deployment's job variables (DeploymentCreate.check_valid_configuration).
    variables = load_pool(kind)["variables"]
    with pytest.raises(PrefectValidationError):
        prefect_validate(values, variables, raise_on_error=True, preprocess=True, ignore_required=True)


def test_deployment_job_variables_in_schema_are_accepted() -> None:
    variables = load_pool("kubernetes")["variables"]
    good = {"gpu_count": 4, "memory_limit": "64Gi", "cpu_request": "500m", "shm_size": "16Gi"}
    prefect_validate(good, variables, raise_on_error=True, preprocess=True, ignore_required=True)


# --- the Kubernetes Job against the Kubernetes API schemas ------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_job_validates_against_kubernetes_schema(version: str) -> None:
    job = render_job(load_pool("kubernetes"))
    assert kubernetes_validate.validate(job, version, strict=True) == version


def test_rendered_job_requests_gpus_mounts_cache_and_reads_secrets() -> None:
    job = render_job(load_pool("kubernetes"), {"gpu_count": 2})
    pod = job["spec"]["template"]["spec"]
    main = container(job)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 2
    for quantities in main["resources"].values():
        for resource, value in quantities.items():
            assert isinstance(value, int) or QUANTITY.match(value), (resource, value)
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["dvc-cache"] == dvc_cache_dir()
    assert volumes["dvc-cache"]["persistentVolumeClaim"]["claimName"] == "yolo-dvc-cache"
    assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e for e in main["env"]}
    for name, key in (("PREFECT_API_URL", "api-url"), ("PREFECT_API_AUTH_STRING", "auth-string")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "prefect-api", "key": key}}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"] == 10001


def test_dvc_cache_claim_manifest_matches_the_template() -> None:
    claim = yaml.safe_load((INFRA / "kubernetes" / "dvc-cache-pvc.yaml").read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(claim, version, strict=True)
    variables = load_pool("kubernetes")["variables"]["properties"]
    assert claim["metadata"]["name"] == variables["dvc_cache_claim"]["default"]
    assert claim["metadata"]["namespace"] == variables["namespace"]["default"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # concurrent runs on several nodes


def _misspell_field(job: dict[str, Any]) -> None:
    main = container(job)
    main["imagePulPolicy"] = main.pop("imagePullPolicy")


def _gpu_limit_not_a_quantity(job: dict[str, Any]) -> None:
    container(job)["resources"]["limits"]["nvidia.com/gpu"] = {"count": 1}


def _mount_without_name(job: dict[str, Any]) -> None:
    del container(job)["volumeMounts"][0]["name"]


def _env_secret_without_key(job: dict[str, Any]) -> None:
    del container(job)["env"][1]["valueFrom"]["secretKeyRef"]["key"]


def _backoff_as_text(job: dict[str, Any]) -> None:
    job["spec"]["backoffLimit"] = "none"


@pytest.mark.parametrize(
    ("breaks", "where"),
    [
        (_misspell_field, ["containers", 0]),
        (_gpu_limit_not_a_quantity, ["containers", 0, "resources", "limits", "nvidia.com/gpu"]),
        (_mount_without_name, ["containers", 0, "volumeMounts", 0]),
        (_env_secret_without_key, ["containers", 0, "env", 1, "valueFrom", "secretKeyRef"]),
        (_backoff_as_text, ["spec", "backoffLimit"]),
    ],
)
def test_broken_job_fails_kubernetes_schema(breaks: Any, where: list[Any]) -> None:
    job = render_job(load_pool("kubernetes"))
    kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)  # the same Job, unbroken, passes
    breaks(job)
    with pytest.raises(kubernetes_validate.ValidationError) as refused:
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)
    assert list(refused.value.path)[-len(where) :] == where  # refused where it was broken, not elsewhere


def test_pod_fields_prefect_requires_are_the_only_ones_outside_the_schema() -> None:
    # What render_job removes, and why: with them the strict check fails at the pod spec, on those two
    # names alone; the lenient one (unknown fields allowed, as the API server treats them) passes.
    job = copy.deepcopy(render("kubernetes", load_pool("kubernetes"), RUN_VALUES).job_manifest)
    kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=False)
    with pytest.raises(kubernetes_validate.ValidationError) as refused:
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)
    assert list(refused.value.path) == ["spec", "template", "spec"]
    assert "'completions', 'parallelism' were unexpected" in refused.value.message


def test_broken_template_fails_once_rendered() -> None:
    # A typo in the template file itself (not in a rendered copy) reaches the schema check too.
    template = load_pool("kubernetes")
    limits = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    limits["limit"] = limits.pop("limits")
    with pytest.raises(kubernetes_validate.ValidationError, match="limit"):
        kubernetes_validate.validate(render_job(template), K8S_VERSIONS[-1], strict=True)


# --- the API URL and auth string never in clear -----------------------------------------------------


def _flow_run_env(kind: str, template: dict[str, Any]) -> dict[str, Any]:
    """The environment a worker holding an API URL and auth string gives a flow run's container
    (``prepare_for_flow_run``, which both workers call first: it merges the worker's own settings
    under the template's ``env`` and drops the names set to null)."""
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api", PREFECT_API_AUTH_STRING: "admin:s3cret"}):
        config = render(kind, template, RUN_VALUES)
        config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="brave-yak"))
    return dict(config.env)


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_worker_settings_do_not_reach_the_container_in_clear(kind: str) -> None:
    env = _flow_run_env(kind, load_pool(kind))
    assert "PREFECT_API_URL" not in env and "PREFECT_API_AUTH_STRING" not in env
    assert "s3cret" not in json.dumps(env)
    if kind == "docker":
        assert env["PREFECT_API_AUTH_STRING_FILE"] == "/run/secrets/prefect/auth-string"
    # Without the template's nulls the worker would copy both in clear: what the nulls are for.
    template = load_pool(kind)
    del template["variables"]["properties"]["env"]["default"]
    leaked = _flow_run_env(kind, template)
    assert leaked["PREFECT_API_AUTH_STRING"] == "admin:s3cret"


def test_real_kubernetes_worker_builds_a_valid_job_without_secrets_in_clear() -> None:
    # The stand-in configuration classes above against the worker's own: where prefect-kubernetes is
    # importable, its configuration prepares the Job exactly as the worker would submit it.
    worker = pytest.importorskip(
        "prefect_kubernetes.worker",
        reason="prefect-kubernetes is not a project dependency (the image installs 0.8.0, infra/docker/Dockerfile); "
        "pip install prefect-kubernetes==0.8.0 to run this check",
    )
    secrets = {PREFECT_API_URL: "http://127.0.0.1:4200/api", PREFECT_API_AUTH_STRING: "admin:s3cret"}
    with temporary_settings(secrets):
        config = asyncio.run(
            worker.KubernetesWorkerJobConfiguration.from_template_and_values(
                load_pool("kubernetes"), {"gpu_count": 2}, client=_NoServer()
            )
        )
        config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="brave-yak"))
    job = copy.deepcopy(config.job_manifest)
    assert "s3cret" not in json.dumps(job)
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {"name": "prefect-api", "key": "auth-string"}
    pod = job["spec"]["template"]["spec"]
    del pod["parallelism"], pod["completions"]  # as in render_job
    assert kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True) == K8S_VERSIONS[-1]
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_templates_hold_no_credentials() -> None:
    for path in POOLS.values():
        text = path.read_text()
        assert not re.search(r"https?://|:[^/\s\"]+@|password|token", text, re.IGNORECASE), path


# --- Docker: GPUs and the cache ---------------------------------------------------------------------


def docker_create_args(config: DockerJobConfiguration) -> dict[str, Any]:
    """What docker-py sends the Docker Engine API for the container prefect-docker's worker creates:
    the worker passes these configuration fields, and ``container_create_kwargs`` spread beside them,
    to ``containers.create`` (``DockerWorker._build_container_settings``), which docker-py turns into
    the create request and its HostConfig with ``_create_container_args``, offline."""
    from docker.constants import DEFAULT_DOCKER_API_VERSION
    from docker.models.containers import _create_container_args

    kwargs = {
        "image": config.image,
        "command": config.command,
        "environment": config.env,
        "auto_remove": config.auto_remove,
        "labels": config.labels,
        "name": config.name,
        "volumes": config.volumes,
        "mem_limit": config.mem_limit,
        **(config.container_create_kwargs or {}),
        "version": DEFAULT_DOCKER_API_VERSION,
    }
    return _create_container_args(kwargs)


def test_docker_container_gets_gpus_cache_and_secrets() -> None:
    config = render("docker", load_pool("docker"), {**RUN_VALUES, "gpu_count": 2})
    assert config.image == "yolo-pipeline:cuda"
    host = docker_create_args(config)["host_config"]
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["ShmSize"] == 8 * 1024**3 and host["Memory"] == 32 * 1024**3
    binds = {bind.split(":")[1]: bind for bind in host["Binds"]}
    assert binds[dvc_cache_dir()] == f"yolo-dvc-cache:{dvc_cache_dir()}"
    assert binds["/run/secrets/prefect"] == "/etc/yolo-pipeline/prefect:/run/secrets/prefect:ro"


@pytest.mark.parametrize(
    ("breaks", "error"),
    [
        # A misspelled docker-py argument: docker-py refuses it (the Engine would never see a GPU).
        (lambda create: create.update(device_request=create.pop("device_requests")), TypeError),
        # Kubernetes' quantity where Docker wants its own units.
        (lambda create: create.update(shm_size="8Gi"), DockerException),
    ],
)
def test_broken_docker_container_settings_are_refused(breaks: Any, error: type[Exception]) -> None:
    template = load_pool("docker")
    breaks(template["job_configuration"]["container_create_kwargs"])
    config = render("docker", template, RUN_VALUES)
    with pytest.raises(error):
        docker_create_args(config)


# --- the image's DVC config -------------------------------------------------------------------------


def test_image_dvc_config_points_dvc_at_the_mounted_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(DVC_SYSTEM_CONFIG.parent))
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "global"))
    repo = Repo.init(str(tmp_path / "ws"), no_scm=True)
    try:
        assert repo.config["cache"]["dir"] == dvc_cache_dir() == "/var/cache/dvc"
        assert repo.cache.local.path == "/var/cache/dvc/files/md5"
        assert repo.config["cache"]["shared"] == "group"
    finally:
        repo.close()


# --- the Dockerfile, statically ---------------------------------------------------------------------


# BuildKit's parser is Go, in a c-shared library: loaded into a pytest worker that has started
# threads and forked subprocesses, its runtime crashed the worker once (xdist: "node down: Not properly
# terminated"). It runs in a process of its own, and hands back what the tests read.
_PARSE = (
    "import dockerfile, json, sys\n"
    "print(json.dumps([{'cmd': c.cmd, 'value': list(c.value), 'start_line': c.start_line, 'json': c.json}\n"
    "                  for c in dockerfile.parse_file(sys.argv[1])]))"
)


@functools.cache
def _instructions() -> list[Any]:
    """The Dockerfile's instructions, read by Docker's own parser (BuildKit's, in the ``dockerfile``
    package): a syntax error fails here, as it would fail ``docker build``."""
    proc = subprocess.run([sys.executable, "-c", _PARSE, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"BuildKit's parser refused the Dockerfile: {proc.stderr[-2000:]}"
    return [SimpleNamespace(**{**c, "value": tuple(c["value"])}) for c in json.loads(proc.stdout)]


def test_every_run_is_valid_shell() -> None:
    # RUN's shell form runs under /bin/sh -c: each must at least parse there.
    runs = [c for c in _instructions() if c.cmd == "RUN"]
    assert runs
    for run in runs:
        checked = subprocess.run(["sh", "-n", "-c", run.value[0]], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, (run.start_line, checked.stderr)


def _dockerignore_lets_in() -> set[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines, ".dockerignore should exclude everything by default"
    return {line[1:] for line in lines if line.startswith("!")}


def test_every_copy_source_exists_and_reaches_the_build() -> None:
    let_in = _dockerignore_lets_in()
    sources = []
    for instruction in _instructions():
        if instruction.cmd == "COPY":
            sources += instruction.value[:-1]
    assert sources, "no COPY in the Dockerfile"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert source in let_in, f"COPY {source}: excluded by .dockerignore"


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["gpu"]
    return dict(re.fullmatch(r"([\w.-]+)==([\w.]+)", r).groups() for r in requirements if "==" in r)  # type: ignore[misc]


def test_dockerfile_pins_equal_pyproject() -> None:
    args = dict(c.value[0].split("=", 1) for c in _instructions() if c.cmd == "ARG" and "=" in c.value[0])
    pins = _pins()
    assert args["TORCH_VERSION"] == pins["torch"] == "2.14.1"
    assert args["TORCHVISION_VERSION"] == pins["torchvision"] == "0.29.1"
    assert args["ONNXRUNTIME_GPU_VERSION"] == pins["onnxruntime-gpu"]
    assert args["VARIANT"] in {"cpu", "cuda"}
    # Base images by tag, never a moving `latest` or none at all.
    for name in ("CPU_BASE", "CUDA_BASE"):
        image, _, tag = args[name].rpartition(":")
        assert image and tag and tag != "latest", args[name]


def test_dockerfile_runtime_environment_user_and_entry() -> None:
    instructions = _instructions()
    env: dict[str, str] = {}
    for command in instructions:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    assert env["YOLO_OFFLINE"] == "true"
    assert env["DO_NOT_TRACK"] == env["ORT_DISABLE_TELEMETRY"] == "1"
    assert env["DVC_SYSTEM_CONFIG_DIR"] == "/etc/dvc"
    user = [c.value[0] for c in instructions if c.cmd == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    # The pods run as the image's user, and the cache volume belongs to its group (fsGroup).
    pod = load_pool("kubernetes")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}" and context["fsGroup"] == context["runAsGroup"]
    entry = next(c for c in reversed(instructions) if c.cmd == "ENTRYPOINT")
    assert entry.json  # exec form: the entry gets signals, not a shell
    assert entry.value[-1] == "/usr/local/bin/pipeline-entrypoint"
    cmd = next(c for c in reversed(instructions) if c.cmd == "CMD")
    assert cmd.json and cmd.value == ("worker",)
    assert "prefect worker start --pool" in ENTRYPOINT.read_text()
    # COPY keeps the file's mode: the entry must be executable as git stores it.
    staged = subprocess.run(
        ["git", "ls-files", "--stage", str(ENTRYPOINT.relative_to(REPO))], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert staged.startswith("100755 "), staged or "entrypoint.sh is not tracked by git"


# --- the entry script, run ----------------------------------------------------------------------------


def _entry(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30
    )


def test_entry_reads_secrets_from_files_and_runs_the_command(tmp_path: Path) -> None:
    (tmp_path / "auth-string").write_text("admin:s3cret\n")
    (tmp_path / "api-url").write_text("http://127.0.0.1:4200/api")
    done = _entry(
        "sh",
        "-c",
        'printf "%s|%s" "$PREFECT_API_URL" "$PREFECT_API_AUTH_STRING"',
        env={
            "PREFECT_API_URL_FILE": str(tmp_path / "api-url"),
            "PREFECT_API_AUTH_STRING_FILE": str(tmp_path / "auth-string"),
        },
    )
    assert (done.returncode, done.stdout) == (0, "http://127.0.0.1:4200/api|admin:s3cret")


def test_entry_names_a_missing_secret_file(tmp_path: Path) -> None:
    done = _entry("true", env={"PREFECT_API_AUTH_STRING_FILE": str(tmp_path / "absent")})
    assert done.returncode == 64
    assert "PREFECT_API_AUTH_STRING_FILE" in done.stderr and str(tmp_path / "absent") in done.stderr


def test_entry_worker_needs_a_pool_and_an_api() -> None:
    done = _entry(env={})
    assert done.returncode == 64 and "PREFECT_WORK_POOL" in done.stderr
    done = _entry("worker", env={"PREFECT_WORK_POOL": "yolo-gpu-kubernetes"})
    assert done.returncode == 64 and "PREFECT_API_URL" in done.stderr
