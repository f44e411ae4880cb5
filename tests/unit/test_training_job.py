"""Where a multi-node job runs (never a param), what a node must share with the head, and the job's channel."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from stages.core.errors import ConfigError
from stages.training import facts
from stages.training.site import job_site


def test_slurm_gives_the_node_rank_count_and_job_id():
    env = {"MASTER_ADDR": "gpu-07", "MASTER_PORT": "29555", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_ID": "4242"}  # fmt: skip
    site = job_site(env, {}, nnodes=2)
    assert (site.endpoint, site.node_rank, site.nnodes, site.run_id) == ("gpu-07:29555", 1, 2, "4242")
    assert site.sources == {"endpoint": "MASTER_ADDR", "node_rank": "SLURM_NODEID", "nnodes": "SLURM_JOB_NUM_NODES",
                            "run_id": "SLURM_JOB_ID"}  # fmt: skip


def test_kubeflow_pytorchjob_and_indexed_jobs():
    pet = {"PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": "23456", "PET_NODE_RANK": "0", "PET_NNODES": "3"}
    site = job_site(pet, {}, nnodes=3)
    assert (site.endpoint, site.node_rank) == ("job-master-0:23456", 0)
    indexed = job_site({"MASTER_ADDR": "yolo-0.yolo", "JOB_COMPLETION_INDEX": "2"}, {}, nnodes=3)
    assert (indexed.endpoint, indexed.node_rank) == ("yolo-0.yolo:29400", 2)


def test_the_command_line_wins_over_the_environment():
    env = {"MASTER_ADDR": "a", "MASTER_PORT": "1", "SLURM_NODEID": "1"}
    site = job_site(env, {"endpoint": "b:2", "node_rank": "0", "run_id": "r"}, nnodes=2)
    assert (site.endpoint, site.node_rank, site.run_id) == ("b:2", 0, "r")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.5.5.5", "::1"])
def test_a_loopback_endpoint_with_several_nodes_is_refused_naming_the_variable(host):
    with pytest.raises(ConfigError, match=r"MASTER_ADDR=.* is a loopback address") as err:
        job_site({"MASTER_ADDR": host, "NODE_RANK": "0"}, {}, nnodes=2)
    assert err.value.key == "MASTER_ADDR"
    assert job_site({"MASTER_ADDR": host, "NODE_RANK": "0"}, {}, nnodes=2, same_host=True).host == host
    assert job_site({"MASTER_ADDR": host, "NODE_RANK": "0"}, {}, nnodes=1).host == host


def test_a_host_name_is_not_resolved_to_judge_loopback():
    # Debian maps the machine's own name to 127.0.1.1: the head's name must pass on the head itself.
    site = job_site({"MASTER_ADDR": socket.gethostname(), "SLURM_NODEID": "0"}, {}, nnodes=2)
    assert site.host == socket.gethostname()


def test_an_allocation_of_another_size_than_the_params_is_refused():
    with pytest.raises(ConfigError, match=r"this job has 4 nodes .*train\.distributed\.nnodes is 2"):
        job_site({"MASTER_ADDR": "h", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "4"}, {}, nnodes=2)


@pytest.mark.parametrize(
    ("env", "key"),
    [({"SLURM_NODEID": "0"}, "MASTER_ADDR"), ({"MASTER_ADDR": "h"}, "--node-rank"),
     ({"MASTER_ADDR": "h", "NODE_RANK": "x"}, "NODE_RANK"), ({"MASTER_ADDR": "h", "NODE_RANK": "5"}, "NODE_RANK")],
)  # fmt: skip
def test_missing_or_malformed_placement_is_refused_naming_where_it_is_read(env, key):
    with pytest.raises(ConfigError) as err:
        job_site(env, {}, nnodes=2)
    assert err.value.key == key


def _facts(tmp_path: Path) -> facts.NodeFacts:
    prepared = tmp_path / "data" / "prepared"
    if not prepared.is_dir():
        (prepared / "labels").mkdir(parents=True)
        (prepared / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        (prepared / "data.yaml").write_text("names: {0: x}\n")
    return facts.node_facts(tmp_path, prepared, "yolo11n.yaml")


def test_node_facts_compare_the_data_on_disk_code_and_versions(tmp_path):
    head = _facts(tmp_path)
    assert facts.differences(head, head) == []
    # Ultralytics' label caches are not data.
    (tmp_path / "data" / "prepared" / "labels.cache").write_text("whatever")
    assert _facts(tmp_path).data == head.data
    # Another size: within one tick of the file system's clock an equal-sized rewrite goes unseen.
    (tmp_path / "data" / "prepared" / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.1\n")
    node = _facts(tmp_path)
    assert facts.differences(node, head) == [f"prepared data on disk: {node.data[:12]} vs {head.data[:12]} on the head"]
    other = head.model_copy(update={"versions": {**head.versions, "ultralytics": "9.9.9"}, "code": "0" * 64})
    found = facts.differences(other, head)
    assert any(line.startswith("pipeline code (stages/, flows/)") for line in found)
    assert f"ultralytics 9.9.9 vs {head.versions['ultralytics']} on the head" in found


def test_a_node_without_prepared_data_says_what_to_run(tmp_path):
    from stages.core.errors import DatasetError

    with pytest.raises(DatasetError, match="dvc repro prepare"):
        facts.node_facts(tmp_path, tmp_path / "data" / "prepared", "yolo11n.yaml")


def test_unchanged_files_are_not_read_again(tmp_path, monkeypatch):
    _facts(tmp_path)
    read = []
    monkeypatch.setattr(facts, "file_sha256", lambda path: read.append(path) or "x")
    _facts(tmp_path)
    assert read == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_channel_carries_attempts_refusals_and_the_outcome():
    from stages.training.job import FAILED, JobChannel, JobLost

    site = job_site({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "NODE_RANK": "0"}, {},
                    nnodes=2, same_host=True)  # fmt: skip
    head = JobChannel(site, host=True, connect_timeout_s=10)
    stage = JobChannel(site, host=False, connect_timeout_s=10)
    node = JobChannel(site, host=False, connect_timeout_s=10)
    assert node.poll(1) is None and head.attempts() == 0
    assert stage.new_attempt('{"a": 1}') == 1
    assert node.poll(1) == ("attempt", '{"a": 1}')
    node.refuse(1, 1, "node 1 differs")
    assert stage.refusals(1) == ["node 1 differs"]
    node.joined(1, 1)
    assert stage.joined_count(1) == 1
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(node.next_event(2)))
    waiter.start()
    head.finish(FAILED, "upstream failed")
    waiter.join(timeout=10)
    assert got == [("outcome", {"state": FAILED, "reason": "upstream failed"})]
    node.acknowledge(1)
    assert head.acknowledged() == 1
    del head  # the head's store goes away
    import gc

    gc.collect()
    with pytest.raises(JobLost, match="lost the head's job store"):
        for _ in range(50):
            node.poll(3)


def test_a_head_that_cannot_host_the_store_says_where_and_why(tmp_path):
    from stages.training.job import JobChannel, JobLost, run_head

    site = job_site({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "NODE_RANK": "0"}, {},
                    nnodes=2, same_host=True)  # fmt: skip
    taken = JobChannel(site, host=True, connect_timeout_s=10)
    with pytest.raises(JobLost, match=rf"cannot host the job's store at {site.endpoint} \(MASTER_ADDR\)"):
        run_head(site, ["true"], tmp_path, join_timeout_s=1)
    del taken
