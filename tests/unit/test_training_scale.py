"""Training at scale, the parts that need no second process: LR rule, SyncBN, launch lines, devices."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from stages.core.config import ConfigError, normalize_device, parse_params
from stages.training import handshake, launch, recipe, spec, sync_bn
from stages.training.site import job_site


@pytest.mark.parametrize(
    ("written", "expected"),
    [(0, "0"), ("0", "0"), ("cuda:0", "0"), ([0, 1], "0,1"), ("0,1", "0,1"), ("cuda:0,1", "0,1"), ("CPU", "cpu")],
)
def test_devices_are_accepted_as_users_write_them(written, expected):
    assert normalize_device(written) == expected
    processes = len(expected.split(",")) if expected != "cpu" else 1
    train = {"device": written, "distributed": {"nproc_per_node": processes}}
    assert parse_params({"train": train}).train.device == expected


@pytest.mark.parametrize("written", [-1, [0, 0], "gpu", True, "0,x", []])
def test_devices_that_name_nothing_are_refused(written):
    with pytest.raises(ConfigError, match=r"train\.device"):
        parse_params({"train": {"device": written}})


def test_sync_bn_on_several_cpu_processes_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="SyncBatchNorm trains only on GPUs"):
        parse_params({"train": {"sync_bn": True, "batch": 8, "distributed": {"nproc_per_node": 2}}})


def test_batch_must_split_over_the_processes():
    with pytest.raises(ConfigError, match="multiple of the 3 training processes"):
        parse_params({"train": {"batch": 8, "distributed": {"nnodes": 3}}})


def test_listed_gpus_must_match_the_processes_per_node():
    with pytest.raises(ConfigError, match="one process trains on each listed GPU"):
        parse_params({"train": {"device": [0, 1], "distributed": {"nproc_per_node": 1}}})
    with pytest.raises(ConfigError, match="one process trains on each listed GPU"):
        parse_params({"train": {"device": 0, "distributed": {"nproc_per_node": 2}}})


@pytest.mark.parametrize(
    ("rule", "optimizer", "batch", "base", "factor"),
    [
        ("none", "AdamW", 256, 16, 1.0),
        # The ratio is of images per optimizer step: at nbs 64, batches 8, 16 and 64 all make 64-image steps.
        ("linear", "AdamW", 16, 8, 1.0),
        ("linear", "SGD", 64, 16, 1.0),
        ("linear", "AdamW", 256, 64, 4.0),  # Adam family: the rule as it is
        ("sqrt", "Adam", 256, 16, 2.0),
        # SGD: the summed gradient already grew by the ratio, so linear is what Ultralytics does.
        ("linear", "SGD", 128, 64, 1.0),
        ("sqrt", "SGD", 256, 64, math.sqrt(4) / 4),
        ("sqrt", "SGD", 64, 256, math.sqrt(1 / 4) * 4),
    ],
)
def test_lr_factor_per_rule_and_optimizer_family(rule, optimizer, batch, base, factor):
    assert recipe.lr_factor(rule, optimizer, batch, base, nbs=64) == pytest.approx(factor)


def test_unknown_optimizer_family_is_refused():
    with pytest.raises(ValueError, match="no learning-rate scaling rule"):
        recipe.lr_factor("linear", "Lion", 16, 8, nbs=64)


def test_lr_in_the_optimizer_after_setup_follows_the_rule(tmp_path):
    """Read back from the param groups of the optimizer Ultralytics builds, through the pipeline's trainer."""
    from stages.core.runtime import import_ultralytics
    from stages.data.sample_data import SampleSpec, generate
    from stages.training.settings import TrainerSettings

    import_ultralytics(tmp_path)
    from stages.training.trainer import PipelineTrainer, overrides

    generate(SampleSpec(out=tmp_path / "data", train=8, val=4, size=64, seed=0))
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(
        f"path: {tmp_path / 'data'}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n"
    )
    hyper = parse_params(
        {
            "train": {
                "optimizer": "AdamW",
                "lr0": 0.001,
                "lr_scaling": "linear",
                "base_batch": 8,
                "batch": 16,
                "nbs": 8,  # 16- against 8-image steps (at the default 64 both would make 64-image steps)
                "imgsz": 64,
                "epochs": 1,
                "workers": 0,
            }
        }
    ).train
    settings = TrainerSettings(lr_scaling="linear", base_batch=8, configured_lr0=0.001)
    trainer = PipelineTrainer(
        overrides=overrides(hyper, data_yaml, tmp_path / "run", "yolo11n.yaml"), settings=settings
    )
    trainer._setup_train()
    assert trainer.lr_peak() == pytest.approx(2 * 0.001)
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [pytest.approx(0.002)] * 3


def test_trainer_class_survives_pickling():
    from stages.core.runtime import import_ultralytics

    import_ultralytics(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
    from stages.training.settings import TrainerSettings
    from stages.training.trainer import PipelineTrainer

    assert pickle.loads(pickle.dumps(PipelineTrainer)) is PipelineTrainer
    settings = TrainerSettings(lr_scaling="sqrt", backend="gloo", nnodes=2)
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_sync_bn_converts_and_reverts_to_plain_batch_norm_with_the_same_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    model.train()
    model(torch.randn(2, 3, 8, 8))  # running statistics away from their defaults
    converted = sync_bn.convert(model)
    assert sync_bn.count(converted, nn.SyncBatchNorm) == 2 and sync_bn.count(converted, nn.BatchNorm2d) == 0
    reverted = sync_bn.revert(converted)
    assert sync_bn.count(reverted, nn.SyncBatchNorm) == 0 and sync_bn.count(reverted, nn.BatchNorm2d) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(reverted.state_dict()[key], value), key
    reverted.eval()
    model.eval()
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(reverted(x), model(x))


def test_every_node_runs_the_same_job_command_and_nothing_of_where_is_a_param():
    hyper = parse_params({"train": {"batch": 16, "distributed": {"nnodes": 4, "nproc_per_node": 2}}}).train
    lines = launch.launch_lines(hyper, "params.yaml")
    assert [line.split(": ", 1)[0] for line in lines] == ["node 0", "node 1", "node 2", "node 3"]
    commands = {line.split(": ", 1)[1] for line in lines}
    assert commands == {"python -m stages.training.job --params params.yaml"}
    one = parse_params({"train": {}}).train
    assert launch.launch_lines(one, "params.yaml") == ["node 0: dvc repro train"]


def test_a_job_attempt_joins_the_jobs_store_without_hosting_it():
    hyper = parse_params({"train": {"batch": 16, "distributed": {"nnodes": 2, "join_timeout_s": 120}}}).train
    site = job_site({"MASTER_ADDR": "head", "MASTER_PORT": "29500", "SLURM_NODEID": "1"}, {}, nnodes=2)
    cmd = launch.node_command(hyper.distributed, site, 3, Path("/tmp/spec.json"), Path("/ws"), head=False)
    for flag, value in [
        ("--nnodes", "2"),
        ("--rdzv-backend", "c10d"),
        ("--rdzv-endpoint", "head:29500"),
        ("--rdzv-id", "yolo-train-attempt3"),
        ("--rdzv-conf", "join_timeout=120,is_host=false"),
    ]:
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[-6:] == ["-m", "stages.training.worker", "--spec", "/tmp/spec.json", "--workspace", "/ws"]
    single = launch.node_command(hyper.distributed, None, 1, Path("s"), Path("w"), head=True)
    assert "--standalone" in single and "--rdzv-endpoint" not in single and single[-1] == "--head"


def test_print_launch_cli(tmp_path, capsys):
    from stages import train

    (tmp_path / "params.yaml").write_text("train:\n  batch: 8\n  distributed: {nnodes: 2}\n")
    assert train.main(["--print-launch", "--params", str(tmp_path / "params.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("node 1: python -m stages.training.job")


def test_backend_auto_is_gloo_on_cpu_and_nccl_is_refused_there():
    cpu = parse_params({"train": {"batch": 8, "distributed": {"nnodes": 2}}}).train
    assert spec.backend(cpu) == "gloo"
    gpu = parse_params({"train": {"device": "0", "batch": 8, "distributed": {"nnodes": 2}}}).train
    assert spec.backend(gpu) == "nccl"
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        spec.backend(parse_params({"train": {"distributed": {"backend": "nccl"}}}).train)


def test_params_that_differ_from_the_head_are_named():
    def identity(lr0: float) -> dict:
        return parse_params({"train": {"lr0": lr0, "batch": 8, "distributed": {"nnodes": 2}}}).train.training_identity()

    assert handshake.identity_differences(identity(0.01), identity(0.01)) == []
    assert handshake.identity_differences(identity(0.02), identity(0.01)) == ["train.lr0: 0.02 vs 0.01 on the head"]
    assert handshake.head_index([False, True]) == 1
    with pytest.raises(ConfigError, match="2 nodes claim to be the head"):
        handshake.head_index([True, True])


def test_how_long_nodes_wait_is_not_part_of_what_is_trained():
    a = parse_params({"train": {"distributed": {"join_timeout_s": 5, "collective_timeout_s": 7}}}).train
    b = parse_params({"train": {"distributed": {"max_restarts": 3}}}).train
    assert a.training_identity() == b.training_identity()


@pytest.mark.parametrize("key", ["rdzv_endpoint", "rdzv_id", "timeout_s"])
def test_where_the_job_runs_is_refused_as_a_param_with_where_it_comes_from(key):
    with pytest.raises(ConfigError, match=f"'{key}' is no longer a param"):
        parse_params({"train": {"distributed": {key: "x"}}})


@pytest.mark.parametrize(
    ("group", "head", "expected"), [(0, 0, (1, 0)), (1, 1, (1, 0)), (0, 1, (3, 1)), (1, 0, (3, 1))]
)
def test_the_head_node_holds_global_rank_0(group, head, expected):
    # Two nodes of two processes; local rank 1.
    assert handshake.head_first_rank(group, head, nnodes=2, local_world=2, local_rank=1) == expected
