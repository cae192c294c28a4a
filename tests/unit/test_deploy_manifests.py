"""The deployment files under deploy/, the Dockerfile and the README's cluster commands are
checked against the code they refer to, so none of them can rot silently.

- Serve configs: valid for Ray Serve, the import path is the real app builder, ``args`` are
  valid ``AppArgs``, autoscaling is valid, the state store exists, and the RayService embeds
  exactly deploy/serve-cluster.yaml.
- Every ``rayrec ...`` command line (in YAML values, comments, the Dockerfile and the README's
  "Running on a cluster") parses with the real click command, without running it; every file
  that a ``kubectl apply -f``, ``serve deploy`` or ``ray up`` names exists.
- KubeRay manifests: Ray version, image, volumes, secrets and resources agree with each other
  and with what the Serve graph and the training run need.
- The cluster-launcher YAML passes the launcher's own schema.
- The Dockerfile (no Docker engine here): its COPY sources exist and survive .dockerignore,
  it installs the project with extras that exist and every plugin, and its base image's Ray
  and Python satisfy pyproject.toml.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from rayrec.cli import COMMANDS, cli
from rayrec.serving.config import AppArgs
from rayrec.training.config import load_train_config
from rayrec.training.trainer import worker_layout

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"rayrec:{VERSION}"
SERVE_CONFIGS = ["serve.yaml", "serve-cluster.yaml"]
K8S_FILES = ["storage.yaml", "redis.yaml", "data-pod.yaml", "rayjob-train.yaml", "rayservice.yaml"]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for name in K8S_FILES:
        for doc in load_all(K8S / name):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def rayservice() -> dict:
    return k8s_objects()[("RayService", "rayrec")]


def rayjob() -> dict:
    return k8s_objects()[("RayJob", "rayrec-train")]


def dependency(name: str) -> Requirement:
    [requirement] = [Requirement(d) for d in PYPROJECT["project"]["dependencies"] if Requirement(d).name == name]
    return requirement


def test_every_deploy_file_is_checked_here():
    present = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    checked = {*SERVE_CONFIGS, "cluster.yaml", *(f"kubernetes/{name}" for name in K8S_FILES)}
    assert present == checked, "add the new deploy/ file to this test (or remove the stale name)"


# -- Serve configs ---------------------------------------------------------------------------
def serve_configs() -> dict[str, dict]:
    configs = {name: yaml.safe_load((DEPLOY / name).read_text()) for name in SERVE_CONFIGS}
    configs["kubernetes/rayservice.yaml serveConfigV2"] = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    return configs


@pytest.mark.parametrize("name", [*SERVE_CONFIGS, "kubernetes/rayservice.yaml serveConfigV2"])
def test_serve_configs_build_the_real_graph_with_valid_arguments(name):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    from rayrec import plugins
    from rayrec.serving.app import build_app

    schema = ServeDeploySchema(**serve_configs()[name])
    [app] = schema.applications
    module_name, _, attribute = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    assert builder is build_app and callable(builder)
    args = AppArgs(**app.args)
    for stage_name, stage in args.stages:
        if stage.autoscaling:
            autoscaling = AutoscalingConfig(**stage.autoscaling)
            assert 1 <= autoscaling.min_replicas <= autoscaling.max_replicas, stage_name
            assert autoscaling.target_ongoing_requests <= stage.max_ongoing_requests, stage_name
    scheme = args.state.split("://")[0] if "://" in args.state else "sqlite"
    stores = {
        alias
        for store in plugins.registry().names("state_store")
        for alias in (store, *getattr(plugins.registry().get("state_store", store), "schemes", ()))
    }
    assert scheme in stores, f"state {args.state!r}: no registered state store for {scheme!r}"


def test_the_rayservice_serves_exactly_deploy_serve_cluster_yaml():
    configs = serve_configs()
    assert configs["kubernetes/rayservice.yaml serveConfigV2"] == configs["serve-cluster.yaml"]


def test_the_cluster_config_listens_on_every_node_and_shares_its_state():
    config = serve_configs()["serve-cluster.yaml"]
    assert config["http_options"]["host"] == "0.0.0.0" and config["proxy_location"] == "EveryNode"
    args = AppArgs(**config["applications"][0]["args"])
    # Replicas on several machines cannot share a SQLite file (its WAL needs one host).
    assert not args.state.startswith("sqlite") and "://" in args.state
    assert args.security.api_keys_env, "writes on a cluster need API keys"
    assert all(PurePosixPath(args.model_dir).is_relative_to(root) for root in args.security.model_roots)


# -- command lines ------------------------------------------------------------------------
RAYREC_CALL = re.compile(r"(?<![\w`/.-])rayrec\s+(" + "|".join(map(re.escape, COMMANDS)) + r")\b")
SHELL_OPERATORS = {"&&", "||", ";", "|", ")", "&"}


def command_texts() -> list[tuple[str, str]]:
    """(where, text) for every place a command line can hide."""
    texts: list[tuple[str, str]] = []

    def strings(value, where):
        if isinstance(value, str):
            texts.append((where, value))
        elif isinstance(value, dict):
            for item in value.values():
                strings(item, where)
        elif isinstance(value, list):
            for item in value:
                strings(item, where)

    for path in [*DEPLOY.rglob("*.yaml"), REPO / "Dockerfile"]:
        where = str(path.relative_to(REPO))
        raw = path.read_text()
        comments = [line.split("#", 1)[1] for line in raw.splitlines() if line.lstrip().startswith("#")]
        texts.append((where + " (comments)", "\n".join(comments)))
        if path.suffix == ".yaml":
            for doc in load_all(path):
                strings(doc, where)
        else:
            texts.append((where, raw))
    texts.append(("README.md (Running on a cluster)", "\n".join(readme_cluster_code_blocks())))
    return texts


def readme_cluster_code_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Running on a cluster\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh|console)?\n(.*?)```", section, flags=re.DOTALL)


def command_lines(text: str) -> list[list[str]]:
    """Shell words of each line of ``text``, ``\\`` continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # prose with an apostrophe; a command in it is caught below
            words = None
        if words is None and RAYREC_CALL.search(line):
            raise AssertionError(f"cannot split this command line: {line!r}")
        if words:
            result.append(words)
    return result


def rayrec_invocations() -> list[tuple[str, str, list[str]]]:
    """(where, subcommand, args) of every ``rayrec SUBCOMMAND ...`` found."""
    found = []
    for where, text in command_texts():
        for line in re.sub(r"\\\n", " ", text).splitlines():
            if not RAYREC_CALL.search(line):
                continue
            [words] = command_lines(line) or [[]]
            for i, word in enumerate(words[:-1]):
                if word == "rayrec" and words[i + 1] in COMMANDS:
                    args = []
                    for token in words[i + 2:]:
                        if token in SHELL_OPERATORS:
                            break
                        args.append(token)
                    found.append((where, words[i + 1], args))
    return found


def test_the_manifests_and_readme_hold_the_commands_this_test_expects():
    # Guards the test below against passing because nothing was found.
    found = {(where.split(" ")[0], command) for where, command, _ in rayrec_invocations()}
    assert ("deploy/kubernetes/rayjob-train.yaml", "train") in found
    assert ("deploy/cluster.yaml", "train") in found
    assert ("README.md", "train") in found
    assert ("Dockerfile", "plugins") in found


@pytest.mark.parametrize(
    "where,command,args",
    [pytest.param(*call, id=f"{call[0].split(' ')[0]}:{call[1]}:{i}") for i, call in enumerate(rayrec_invocations())],
)
def test_every_rayrec_command_line_parses_with_the_real_cli(where, command, args, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths in the commands are relative to the checkout
    with click.Context(cli) as parent:
        subcommand = cli.get_command(parent, command)
        try:
            subcommand.make_context(command, list(args), parent=parent)
        except click.UsageError as exc:
            pytest.fail(f"{where}: `rayrec {command} {shlex.join(args)}` does not parse: {exc.format_message()}")


def test_files_named_by_kubectl_serve_and_ray_up_exist():
    named = []
    for where, text in command_texts():
        for words in command_lines(text):
            for i, word in enumerate(words[:-1]):
                if word == "-f" and words[:2] == ["kubectl", "apply"]:
                    named.append((where, words[i + 1]))
                if word in ("deploy", "run") and i and words[i - 1] == "serve":
                    named.append((where, words[i + 1]))
                if word in ("up", "down", "dashboard", "exec") and i and words[i - 1] == "ray":
                    named.append((where, words[i + 1]))
    assert len(named) >= 5
    for where, name in named:
        assert (REPO / name).is_file(), f"{where} names {name}, which does not exist"


# -- KubeRay ----------------------------------------------------------------------------------
def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "2", "4Gi") as a number (CPUs or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template in the Kubernetes manifests."""
    specs = []
    for (kind, name), obj in k8s_objects().items():
        if kind == "Pod":
            specs.append((f"Pod/{name}", obj["spec"]))
        elif kind == "Deployment":
            specs.append((f"Deployment/{name}", obj["spec"]["template"]["spec"]))
        elif kind in ("RayService", "RayJob"):
            cluster = obj["spec"]["rayClusterConfig" if kind == "RayService" else "rayClusterSpec"]
            specs.append((f"{kind}/{name} head", cluster["headGroupSpec"]["template"]["spec"]))
            for group in cluster.get("workerGroupSpecs", []):
                specs.append((f"{kind}/{name} {group['groupName']}", group["template"]["spec"]))
    return specs


def ray_groups(cluster: dict) -> list[tuple[dict, dict]]:
    """(group spec, its Ray container) for the head and each worker group."""
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [(group, group["template"]["spec"]["containers"][0]) for group in groups]


def test_kubernetes_objects_are_the_expected_kinds():
    kinds = {kind for kind, _ in k8s_objects()}
    assert kinds == {"PersistentVolumeClaim", "Deployment", "Service", "Pod", "RayService", "RayJob"}
    for (kind, _), obj in k8s_objects().items():
        assert obj["apiVersion"] == ("ray.io/v1" if kind.startswith("Ray") else "apps/v1" if kind == "Deployment" else "v1")


def test_pods_use_the_project_image_volumes_that_exist_and_sane_resources():
    claims = {name for kind, name in k8s_objects() if kind == "PersistentVolumeClaim"}
    for where, spec in pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        for container in spec["containers"]:
            if not container["image"].startswith("redis:"):
                assert container["image"] == IMAGE, f"{where}: the image built from the Dockerfile is {IMAGE}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: volumeMount {mount['name']} has no volume"
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request, limit = quantity(resources["requests"][resource]), quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{where}: {resource} request {request} > limit {limit}"
            assert quantity(resources["limits"]["memory"]) >= 2**30, f"{where}: under 1 GiB of memory"


def test_ray_clusters_match_the_image_and_start_params_fit_the_pods():
    from_image = dockerfile_args()["RAY_IMAGE"]
    image_ray_version = re.search(r":(\d+\.\d+\.\d+)-", from_image).group(1)
    clusters = [(rayservice(), rayservice()["spec"]["rayClusterConfig"]), (rayjob(), rayjob()["spec"]["rayClusterSpec"])]
    for obj, cluster in clusters:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert cluster["rayVersion"] == image_ray_version, f"{where}: rayVersion differs from the Dockerfile's base image"
        for group, container in ray_groups(cluster):
            params = group["rayStartParams"]
            assert all(isinstance(v, str) for v in params.values()), f"{where}: KubeRay wants rayStartParams as strings"
            assert float(params["num-cpus"]) <= quantity(container["resources"]["limits"]["cpu"]), where
            if "groupName" in group:
                assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", f"{where}: keep work off the head"


def serving_cluster() -> tuple[AppArgs, dict, list[dict]]:
    service = rayservice()
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    args = AppArgs(**config["applications"][0]["args"])
    return args, config, service["spec"]["rayClusterConfig"]["workerGroupSpecs"]


def test_the_serving_workers_hold_every_replica_from_the_least_to_the_most():
    args, _, workers = serving_cluster()
    least = most = 0.0
    for stage in args.deployed_stages().values():
        scaling = stage.autoscaling or {"min_replicas": stage.num_replicas, "max_replicas": stage.num_replicas}
        least += scaling["min_replicas"] * stage.num_cpus
        most += scaling["max_replicas"] * stage.num_cpus

    def cpus(count: str) -> float:
        return sum(group[count] * float(group["rayStartParams"]["num-cpus"]) for group in workers)

    assert least <= cpus("minReplicas"), f"the smallest graph needs {least} CPUs"
    assert most <= cpus("maxReplicas"), f"the largest graph needs {most} CPUs: raise maxReplicas or lower max_replicas"
    assert rayservice()["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_the_serving_pods_see_the_model_the_keys_the_port_and_redis():
    args, config, workers = serving_cluster()
    objects = k8s_objects()
    for group in workers:
        [container] = group["template"]["spec"]["containers"]
        mounts = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]]
        assert any(PurePosixPath(args.model_dir).is_relative_to(m) for m in mounts), "model_dir is not on a mounted volume"
        env = {e["name"]: e for e in container["env"]}
        assert env[args.security.api_keys_env]["valueFrom"]["secretKeyRef"]["name"] == "rayrec-api-keys"
        assert config["http_options"]["port"] in [p["containerPort"] for p in container["ports"]]
    redis_url = re.match(r"redis://([^:/]+):(\d+)/", args.state)
    service = objects[("Service", redis_url.group(1))]
    assert int(redis_url.group(2)) == service["spec"]["ports"][0]["port"]
    [redis] = objects[("Deployment", redis_url.group(1))]["spec"]["template"]["spec"]["containers"]
    assert ["--appendonly", "yes", "--appendfsync", "always"] == redis["args"][:4], "acknowledged events must be durable"


def test_the_training_job_writes_the_served_model_and_has_the_cpus_it_asks_for():
    job = rayjob()
    words = shlex.split(job["spec"]["entrypoint"])
    with click.Context(cli) as parent:
        train = cli.get_command(parent, "train").make_context("train", words[2:], parent=parent)
    args, _, _ = serving_cluster()
    assert train.params["out_dir"] == args.model_dir, "the RayJob should train the model the RayService serves"
    cluster = job["spec"]["rayClusterSpec"]
    mounts = [PurePosixPath(m["mountPath"]) for _, c in ray_groups(cluster) for m in c["volumeMounts"]]
    for path in (train.params["out_dir"], *train.params["interactions"]):  # --interactions repeats
        assert any(PurePosixPath(path).is_relative_to(m) for m in mounts), f"{path} is not on the shared volume"
    available = sum(g["minReplicas"] * float(g["rayStartParams"]["num-cpus"]) for g in cluster["workerGroupSpecs"])
    # The layout the job gets on this cluster (the head runs no work: num-cpus 0).
    config = load_train_config(None, num_workers=train.params["num_workers"])
    workers, cpus_per_worker = worker_layout(config, available)
    assert workers == train.params["num_workers"]
    needed = workers * cpus_per_worker
    assert needed <= available, f"{workers} Ray Train workers need {needed} CPUs; there are {available}"
    largest_pod = max(float(g["rayStartParams"]["num-cpus"]) for g in cluster["workerGroupSpecs"])
    assert cpus_per_worker <= largest_pod, f"a worker needs {cpus_per_worker} CPUs; no pod has that many"
    assert train.params["resume"], "a retried job (backoffLimit) should resume from the last checkpoint"


def test_shared_storage_is_read_write_many():
    claim = k8s_objects()[("PersistentVolumeClaim", "rayrec-shared")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# -- cluster launcher -------------------------------------------------------------------------
def test_the_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    with pytest.raises(Exception):  # the validator does bite
        validate_config(prepare_config({**copy.deepcopy(config), "max_wokers": 2}))
    assert config["docker"]["image"] == IMAGE
    options = " ".join(config["docker"]["run_options"])
    args = AppArgs(**serve_configs()["serve-cluster.yaml"]["applications"][0]["args"])
    assert "--volume /mnt/rayrec:/mnt/rayrec" in options and PurePosixPath(args.model_dir).is_relative_to("/mnt/rayrec")
    assert f"--add-host {re.match(r'redis://([^:/]+)', args.state).group(1)}:" in options
    assert "--env-file" in options  # RAYREC_API_KEYS for the ingress replicas
    assert len(config["provider"]["worker_ips"]) == config["max_workers"]


# -- Dockerfile -------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            instruction, _, rest = current.partition(" ")
            lines.append((instruction.upper(), rest.strip()))
            current = ""
    return lines


def dockerfile_args() -> dict[str, str]:
    result = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            result[name] = default.strip('"')
    return result


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatch(PurePosixPath(prefix).name, pattern.removeprefix("**/")):
                return True  # **/name: at any depth
    return False


def test_dockerignore_matching_works():
    assert dockerignored(".venv/bin/python") and dockerignored("rayrec/__pycache__/x.pyc")
    assert not dockerignored("rayrec/serving/app.py")


def test_the_dockerfile_copies_what_the_install_needs_and_nothing_that_is_ignored():
    copied = []
    for instruction, rest in dockerfile_instructions():
        if instruction in ("COPY", "ADD"):
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            copied += words[:-1]
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "rayrec", "plugins"}
    assert needed <= set(copied)
    # Every file of the package that the install needs survives .dockerignore.
    for path in (REPO / "rayrec").rglob("*"):
        relative = str(path.relative_to(REPO))
        if path.is_file() and path.suffix in (".py", ".html", ".json") and "__pycache__" not in relative:
            assert not dockerignored(relative), relative
    assert dockerignored(".venv") and dockerignored(".git")


def dockerfile_pip_installs() -> list[list[str]]:
    """The arguments of each ``pip install`` in a RUN instruction, up to the next ``&&``."""
    installs = []
    for instruction, rest in dockerfile_instructions():
        if instruction != "RUN":
            continue
        words = shlex.split(rest)
        for i in range(len(words) - 1):
            if words[i : i + 2] == ["pip", "install"]:
                args = []
                for word in words[i + 2 :]:
                    if word in SHELL_OPERATORS:
                        break
                    args.append(word)
                installs.append(args)
    return installs


def test_the_dockerfile_installs_the_project_its_extras_and_every_plugin():
    [project_install] = [args for args in dockerfile_pip_installs() if any(a == "." or a.startswith(".[") for a in args)]
    [project] = [a for a in project_install if a == "." or a.startswith(".[")]
    named = re.fullmatch(r"\.(?:\[([\w,]+)\])?", project).group(1)
    extras = named.split(",") if named else []
    for extra in extras:
        assert extra in PYPROJECT["project"]["optional-dependencies"], f"pyproject.toml has no extra [{extra}]"
    [plugins_glob] = [a for a in project_install if a.startswith("plugins/")]
    plugins = {p.parent for p in REPO.glob("plugins/*/pyproject.toml")}
    assert plugins and plugins == {p.parent for p in REPO.glob(plugins_glob.rstrip("/") + "/pyproject.toml")}
    # The cluster config's state store needs its client library in the image.
    requirements = {Requirement(a).name for a in project_install if a != project and a != plugins_glob}
    for extra in extras:
        requirements |= {Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"][extra]}
    state = AppArgs(**serve_configs()["serve-cluster.yaml"]["applications"][0]["args"]).state
    if state.startswith(("redis://", "rediss://")):
        assert "redis" in requirements, "the image lacks the redis client that the Redis state store imports"
    runs = " ".join(rest for instruction, rest in dockerfile_instructions() if instruction == "RUN")
    assert "rayrec plugins" in runs  # the build fails if a plugin cannot load
    # pip builds in the work directory as the image's user (ray): it must not be root's.
    instructions = dockerfile_instructions()
    [workdir] = [i for i, (instruction, _) in enumerate(instructions) if instruction == "WORKDIR"]
    assert ("RUN", f"mkdir -p {instructions[workdir][1]}") in instructions[:workdir]
    assert all(instruction != "USER" for instruction, _ in instructions)


def test_the_dockerfile_base_image_and_torch_match_pyproject():
    args = dockerfile_args()
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cpu", args["RAY_IMAGE"])
    assert match, args["RAY_IMAGE"]
    ray_version, python = match.group(1), f"{match.group(2)}.{match.group(3)}"
    assert dependency("ray").specifier.contains(ray_version)
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python)
    assert Requirement(args["TORCH_REQUIREMENT"]).specifier == dependency("torch").specifier
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    [from_line] = [rest for instruction, rest in dockerfile_instructions() if instruction == "FROM"]
    assert from_line == "${RAY_IMAGE}"
    exposed = [rest for instruction, rest in dockerfile_instructions() if instruction == "EXPOSE"]
    assert exposed == [str(serve_configs()["serve-cluster.yaml"]["http_options"]["port"])]


def test_build_arguments_named_in_docs_exist():
    documented = set()
    for text in [(REPO / "Dockerfile").read_text(), (REPO / "README.md").read_text()]:
        documented |= set(re.findall(r"--build-arg (\w+)=", text))
    assert documented and documented <= set(dockerfile_args())
    gpu_image = re.search(r"RAY_IMAGE=(\S+-gpu)", (REPO / "Dockerfile").read_text()).group(1)
    assert gpu_image == dockerfile_args()["RAY_IMAGE"].replace("-cpu", "-gpu")
