"""The table of `make compare` (stages/reporting/compare.py): which numbers belong to which experiment."""

from __future__ import annotations

from stages.reporting.compare import measured_files, render, revisions, stale_stages, table


def lock(model: str, benchmarked: str) -> dict:
    """A dvc.lock where train wrote ``model`` and benchmark last ran on ``benchmarked``."""
    return {
        "stages": {
            "train": {"deps": [{"path": "train.py", "md5": "t"}], "outs": [{"path": "model.pt", "md5": model}]},
            "export": {"deps": [{"path": "model.pt", "md5": benchmarked}], "outs": [{"path": "deploy", "md5": "d"}]},
            "evaluate": {
                "deps": [{"path": "model.pt", "md5": model}],
                "outs": [{"path": "metrics/quality.json", "md5": "q"}],
            },
            "benchmark": {
                "deps": [{"path": "deploy", "md5": "d"}],
                "outs": [{"path": "metrics/deployment.json", "md5": "b"}],
            },
        }
    }


def test_a_stage_downstream_of_a_stage_that_did_not_rerun_is_stale_too():
    # export ran on the old model; benchmark's own deps match, but it ran on export's stale output.
    assert stale_stages(lock("new", "old")) == {"export", "benchmark"}
    assert stale_stages(lock("same", "same")) == set()


def test_only_files_written_on_the_revisions_own_outputs_are_measured():
    files = ["metrics/quality.json", "metrics/deployment.json", "metrics/other.json"]
    assert measured_files(lock("new", "old"), files) == {"metrics/quality.json"}
    assert measured_files(lock("a", "a"), files) == {"metrics/quality.json", "metrics/deployment.json"}
    assert measured_files({}, files) == set(), "no dvc.lock: no stage ran, nothing measured"


def shown(rev: str, lr0: float, ms: float, name: str | None = None) -> dict:
    data = {
        "rev": rev,
        "params": {"params.yaml": {"data": {"train": {"lr0": lr0, "epochs": 3}}}},
        "metrics": {
            "metrics/quality.json": {"data": {"gate": 1, "map50": 0.5, "map50_95": 0.3, "ap": {"bus_coach": lr0}}},
            "metrics/deployment.json": {"data": {"deployable": 1, "ms": {"onnx-fp32": ms}}},
        },
    }
    return {"rev": rev, "name": name, "data": data}


def test_tied_headline_numbers_stay_and_unmeasured_ones_are_absent():
    base = shown("a" * 40, 0.01, 5.0, name="main")
    base["experiments"] = [
        {"revs": [shown("b" * 40, 0.02, 5.0, name="trial")]},
        {"revs": [{"rev": "c" * 40, "name": "queued", "data": None}]},
    ]
    rows = revisions([base])
    assert [r.name for r in rows] == ["main", "trial"]
    locks = {"a" * 40: lock("m1", "m1"), "b" * 40: lock("m2", "m1")}
    cells = table(rows, locks)
    assert cells[0] == ["Experiment", "train.lr0", "gate", "map50", "map50_95", "deployable", "ms.onnx-fp32"]
    assert cells[1] == ["main", "0.01", "1", "0.5", "0.3", "1", "5"]
    assert cells[2] == ["  trial", "0.02", "1", "0.5", "0.3", "-", "-"]
    assert "ap.bus_coach" in table(rows, locks, per_class=True)[0]
    text = render(cells).splitlines()
    assert text[0].startswith("Experiment  train.lr0") and text[3].startswith("  trial")
