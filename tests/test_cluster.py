"""The cluster files: `ray up` YAMLs validated by the installed Ray, KubeRay manifests checked for what the
jobs need, the image kept in step with the lock, and docs/cluster.md's figures recounted."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import torch
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema
from torch.utils.flop_counter import FlopCounterMode

from avgeo.config import load_config
from avgeo.distributed.grpo import GRPOConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOC = REPO / "docs" / "cluster.md"
RAY_UP_FILES = {"aws": CLUSTER / "aws-h100.yaml", "gcp": CLUSTER / "gcp-h100.yaml"}
GPU_INSTANCE = {"aws": ("InstanceType", "p5.48xlarge"), "gcp": ("machineType", "a3-highgpu-8g")}
JOBS = ("embed", "mart", "rfm", "grpo", "geotag", "evaluate")
SHARED_MOUNT = "/mnt/avgeo"
IMAGE_PROJECT_DIR = "/home/ray/avgeo"


def _ray_up(name: str) -> dict:
    return yaml.safe_load(RAY_UP_FILES[name].read_text())


def _ray_schema() -> dict:
    """The cluster-config JSON schema shipped inside the installed Ray."""
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _manifests(file_name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / file_name).read_text()))


def _ray_version_in_lock() -> str:
    match = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert match, "constraints.txt pins no ray version"
    return match.group(1)


def _install_command() -> str:
    """The project's install command, with the torch pins the Makefile uses on every pip call."""
    match = re.search(r"^TORCH_PINS := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile defines no TORCH_PINS"
    return f"pip install -c constraints.txt {match.group(1).strip()} -e ."


def _cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec in the manifests, by where it sits."""
    (raycluster,) = [doc for doc in _manifests("raycluster.yaml") if doc["kind"] == "RayCluster"]
    (rayjob,) = _manifests("rayjob-grpo.yaml")
    (rayservice,) = _manifests("rayservice.yaml")
    return {
        "RayCluster": raycluster["spec"],
        "RayJob": rayjob["spec"]["rayClusterSpec"],
        "RayService": rayservice["spec"]["rayClusterConfig"],
    }


def _groups(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group name, pod spec, rayStartParams) for the head group and every worker group."""
    head = spec["headGroupSpec"]
    groups = [("head", head["template"]["spec"], head["rayStartParams"])]
    groups += [(g["groupName"], g["template"]["spec"], g["rayStartParams"]) for g in spec["workerGroupSpecs"]]
    return groups


def _images() -> dict[str, str]:
    images = {f"{name}-h100.yaml": _ray_up(name)["docker"]["image"] for name in RAY_UP_FILES}
    for where, spec in _cluster_specs().items():
        for group, pod, _ in _groups(spec):
            for container in pod["containers"]:
                images[f"{where}/{group}/{container['name']}"] = container["image"]
    return images


@pytest.mark.parametrize("name", sorted(RAY_UP_FILES))
def test_ray_up_yaml_passes_rays_schema_and_config_preparation(name):
    config = _ray_up(name)
    jsonschema.validate(config, _ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("name", sorted(RAY_UP_FILES))
def test_schema_validation_catches_a_misspelled_key_and_a_fractional_gpu(name):
    schema = _ray_schema()
    misspelled = _ray_up(name)
    misspelled["available_node_types"]["gpu_h100x8"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(misspelled, schema)
    fractional = _ray_up(name)
    fractional["available_node_types"]["gpu_h100x8"]["resources"]["GPU"] = 7.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(fractional, schema)


@pytest.mark.parametrize("name", sorted(RAY_UP_FILES))
def test_ray_up_node_types_head_runs_no_work_gpu_nodes_are_8xh100(name):
    config = _ray_up(name)
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert set(node_types) == {"head_cpu", "gpu_h100x8", "cpu_decode"}
    key, instance = GPU_INSTANCE[name]
    assert node_types["gpu_h100x8"]["node_config"][key] == instance
    assert node_types["gpu_h100x8"]["resources"]["GPU"] == 8
    assert "GPU" not in node_types["cpu_decode"]["resources"]
    assert node_types["cpu_decode"]["resources"]["CPU"] > 0
    workers = [node_types["gpu_h100x8"], node_types["cpu_decode"]]
    assert all(0 <= w["min_workers"] <= w["max_workers"] for w in workers)
    assert sum(w["max_workers"] for w in workers) == config["max_workers"]


def test_aws_and_gcp_files_differ_only_in_provider_specifics():
    aws, gcp = _ray_up("aws"), _ray_up("gcp")
    provider_specific = {"provider", "available_node_types", "initialization_commands", "head_setup_commands"}
    assert set(aws) == set(gcp)
    for key in set(aws) - provider_specific:
        assert aws[key] == gcp[key], key
    for node_type, aws_type in aws["available_node_types"].items():
        gcp_type = gcp["available_node_types"][node_type]
        assert (aws_type.get("min_workers"), aws_type.get("max_workers")) == (
            gcp_type.get("min_workers"),
            gcp_type.get("max_workers"),
        ), node_type


@pytest.mark.parametrize("name", sorted(RAY_UP_FILES))
def test_ray_up_installs_the_project_mounts_shared_storage_and_enables_token_auth(name):
    config = _ray_up(name)
    assert config["setup_commands"] == [f"cd ~/avgeo && {_install_command()}"]
    assert config["file_mounts"] == {IMAGE_PROJECT_DIR: ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    run_options = config["docker"]["run_options"]
    assert f"--volume {SHARED_MOUNT}:{SHARED_MOUNT}" in run_options
    assert "--env RAY_AUTH_MODE=token" in run_options
    mounts = [c for c in config["initialization_commands"] if " mount " in c]
    assert len(mounts) == 1 and mounts[0].rstrip().endswith(f" {SHARED_MOUNT}")
    # The checkout must not drag the venv and caches along to every node.
    assert ".gitignore" in config["rsync_filter"]


def test_every_cluster_file_and_the_build_command_name_one_image():
    images = _images()
    assert len(set(images.values())) == 1, images
    (image,) = set(images.values())
    build = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", DOC.read_text())
    assert build and build.group(1) == image


def test_dockerfile_base_image_and_install_follow_the_lock():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)$", dockerfile, re.MULTILINE)
    assert base == f"rayproject/ray:{_ray_version_in_lock()}-py311-gpu"
    assert f"&& {_install_command()}\n" in dockerfile
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)
    assert workdir == IMAGE_PROJECT_DIR


def test_dockerfile_copies_only_paths_that_exist_and_the_build_context_keeps():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    kept = {
        line[1:]
        for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = [
        source
        for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE)
        for source in [part for part in line.split() if not part.startswith("--")][:-1]
    ]
    assert "avgeo" in sources and "constraints.txt" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source in kept, f"{source} is copied but cluster/Dockerfile.dockerignore drops it"


def test_kuberay_manifests_parse_with_their_kinds_versions_and_token_auth():
    names = sorted(path.name for path in KUBERAY.iterdir())
    kinds = {name: [doc["kind"] for doc in _manifests(name)] for name in names}
    assert kinds == {
        "raycluster.yaml": ["PersistentVolumeClaim", "RayCluster"],
        "rayjob-grpo.yaml": ["RayJob"],
        "rayservice.yaml": ["RayService"],
    }
    for name in kinds:
        for doc in _manifests(name):
            assert doc["apiVersion"] == ("v1" if doc["kind"] == "PersistentVolumeClaim" else "ray.io/v1")
    for where, spec in _cluster_specs().items():
        assert spec["rayVersion"] == _ray_version_in_lock(), where
        assert spec["authOptions"] == {"mode": "token", "secretName": "avgeo-ray-auth"}, where


def test_gpu_worker_groups_take_whole_8xh100_nodes_and_heads_run_no_work():
    for where, spec in _cluster_specs().items():
        gpu_groups = 0
        for group, pod, start_params in _groups(spec):
            (container,) = pod["containers"]
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], (where, group)
            if group.startswith("gpu-"):
                gpu_groups += 1
                assert resources["limits"]["nvidia.com/gpu"] == 8, (where, group)
            else:
                assert "nvidia.com/gpu" not in resources["limits"], (where, group)
            if group == "head":
                assert start_params["num-cpus"] == "0", where
        assert gpu_groups == 1, where


def test_every_pod_mounts_the_shared_claim_and_only_volumes_it_defines():
    (claim,) = [doc for doc in _manifests("raycluster.yaml") if doc["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, spec in _cluster_specs().items():
        for group, pod, _ in _groups(spec):
            volumes = {volume["name"]: volume for volume in pod["volumes"]}
            (container,) = pod["containers"]
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes), (where, group)
            shared = volumes[mounts[SHARED_MOUNT]]
            assert shared["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], (where, group)


def test_rayjob_runs_grpo_from_the_image_project_and_tears_down():
    (rayjob,) = _manifests("rayjob-grpo.yaml")
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "python jobs/grpo.py --config configs/grpo/h100.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": IMAGE_PROJECT_DIR}

    # The job's GPU actors fill the cluster's GPUs exactly: none left idle, none waiting for a GPU.
    placement = load_config(GRPOConfig, REPO / "configs" / "grpo" / "h100.yaml").placement
    wanted = (
        placement.learner_workers * placement.learner.num_gpus
        + placement.rollout_workers * placement.rollout.num_gpus
        + placement.reference.num_gpus
        + placement.reward.num_gpus
    )
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    provided = sum(
        g["replicas"] * g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
        for g in groups
    )
    assert wanted == provided


def test_rayservice_serves_the_h100_serve_config_with_zero_downtime_upgrades():
    (rayservice,) = _manifests("rayservice.yaml")
    assert rayservice["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    deployed = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(deployed)
    h100 = yaml.safe_load((REPO / "serve" / "h100.yaml").read_text())
    assert deployed["applications"] == h100["applications"], "serveConfigV2 drifted from serve/h100.yaml"
    gpus = {
        d["name"]: d["ray_actor_options"].get("num_gpus", 0)
        for d in deployed["applications"][0]["deployments"]
    }
    assert gpus["Reasoning"] == 1 and 0 < gpus["Perception"] < 1 and gpus["Ingress"] == 0


def test_every_placeholder_in_the_cluster_files_is_documented():
    used = {
        token
        for path in CLUSTER.rglob("*")
        if path.is_file()
        for token in re.findall(r"<[a-z][a-z0-9-]*>", path.read_text())
    }
    section = DOC.read_text().split("## What to fill in", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(<[a-z][a-z0-9-]*>)` \|", section, re.MULTILINE))
    assert used == documented


def test_runbook_covers_every_job_and_names_only_existing_cluster_files():
    doc = DOC.read_text()
    for job in JOBS:
        assert f"python jobs/{job}.py --config configs/{job}/h100.yaml" in doc, job
    named = set(re.findall(r"`(cluster/[\w./-]+)`", doc))
    assert named, "the runbook names no cluster files"
    for path in named:
        assert (REPO / path).is_file(), path
    shipped = {str(p.relative_to(REPO)) for p in CLUSTER.rglob("*") if p.is_file()}
    assert shipped <= named, shipped - named


def _documented_gflop(row_prefix: str) -> float:
    pattern = rf"^\| {re.escape(row_prefix)}[^|]* \| [^|]+ \| ([\d.]+) \|$"
    (value,) = re.findall(pattern, DOC.read_text(), re.MULTILINE)
    return float(value)


def _counted_gflop(model: torch.nn.Module, *args, **kwargs) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops() / 1e9


def test_capacity_model_flops_of_clip_vit_l14_and_llama_7b_match_a_count():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, LlamaConfig, LlamaForCausalLM

    # The meta device builds the full-size architectures without allocating or computing anything.
    with torch.device("meta"):
        vit = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
                projection_dim=768,
            )
        )
        llama = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                vocab_size=32000,
            )
        )
    assert sum(p.numel() for p in vit.vision_model.parameters()) == pytest.approx(304e6, rel=0.01)
    assert sum(p.numel() for p in llama.parameters()) == pytest.approx(6.74e9, rel=0.01)
    frame = torch.empty(1, 3, 224, 224, device="meta")
    prompt = torch.zeros(1, 256, dtype=torch.long, device="meta")
    vit_gflop = _counted_gflop(vit, pixel_values=frame)
    prefill_gflop = _counted_gflop(llama, input_ids=prompt, logits_to_keep=1)
    assert _documented_gflop("CLIP ViT-L/14") == pytest.approx(vit_gflop, rel=0.01)
    assert _documented_gflop("LLaMA-7B") == pytest.approx(prefill_gflop, rel=0.01)


def test_capacity_model_flops_of_clap_htsat_match_a_count():
    from laion_clap.clap_module.htsat import create_htsat_model
    from laion_clap.clap_module.model import CLAPAudioCfp

    config_path = Path(create_htsat_model.__code__.co_filename).parent / "model_configs" / "HTSAT-tiny.json"
    audio_config = CLAPAudioCfp(**json.loads(config_path.read_text())["audio_cfg"])
    htsat = create_htsat_model(audio_config).eval()
    assert sum(p.numel() for p in htsat.parameters()) == pytest.approx(31.3e6, rel=0.01)
    window_48khz_10s = torch.zeros(1, audio_config.clip_samples)
    gflop = _counted_gflop(htsat, {"waveform": window_48khz_10s}, device="cpu")
    assert _documented_gflop("CLAP HTSAT-tiny") == pytest.approx(gflop, rel=0.01)
