"""dvc.yaml and the code agree: stage names and order, commands, params keys and code deps."""

import yaml

from stages import PIPELINE
from stages.core.config import Params
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SECTIONS = set(Params().as_dict())


def test_stage_names_and_order_match_pipeline():
    assert tuple(DVC) == PIPELINE


def test_each_command_only_calls_its_stage_module():
    for name, stage in DVC.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        assert f"stages/{name}.py" in stage["deps"], f"{name} must depend on its own module"


def test_params_keys_exist():
    defaults = Params().as_dict()
    for name, stage in DVC.items():
        for key in stage.get("params", []):
            section, _, field = key.partition(".")
            assert section in SECTIONS, f"{name}: unknown params section {key}"
            if field:
                assert field in defaults[section], f"{name}: unknown params key {key}"


def test_benchmark_params_only_reach_benchmark_and_report():
    readers = {
        name for name, stage in DVC.items() if any(k.split(".")[0] == "benchmark" for k in stage.get("params", []))
    }
    assert readers == {"benchmark", "report"}


def test_training_does_not_read_downstream_params():
    # Its own section, and the upstream pixel limit it shares with validate (never evaluate/export keys).
    assert DVC["train"]["params"] == ["train", "validate.max_image_pixels"]


def test_engine_and_benchmark_depend_on_the_environment_fingerprint():
    for name in ("build_engine", "benchmark"):
        assert "${paths.environment}" in DVC[name]["deps"]
    assert DVC["environment"]["always_changed"] is True


def test_no_stage_reads_the_tune_section_or_its_paths():
    """Changing the search space (or where studies are kept) must retrain nothing."""
    from stages.core.config import PIPELINE_SECTIONS

    assert "tune" not in PIPELINE_SECTIONS
    text = (REPO / "dvc.yaml").read_text()
    assert "paths.tune_" not in text, "the study's files are no stage's deps or outputs"
    for name, stage in DVC.items():
        assert not [k for k in stage.get("params", []) if k.split(".")[0] == "tune"], name


def test_report_reads_exactly_the_pipeline_sections():
    from stages.core.config import PIPELINE_SECTIONS

    assert DVC["report"]["params"] == list(PIPELINE_SECTIONS)


def test_only_cheap_outputs_skip_the_cache():
    """The run-cache restores a stage only when all its outputs are cached."""
    uncached = {
        name
        for name, stage in DVC.items()
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
        if isinstance(out, dict) and next(iter(out.values())).get("cache") is False
    }
    assert uncached == {"environment", "prepare"}


def test_dvc_sees_every_dvc_file_the_project_writes():
    """DVC skips folders that git ignores; a .dvc file in one is invisible to checkout, push and pull.

    That is how `dvc exp run` once deleted models/production: its forced checkout removed the folder
    as an unused link, because models/production.dvc sat in a folder DVC never walked into.
    """
    from dvc.scm import SCM

    scm = SCM(str(REPO))
    paths = Params().paths
    for tracked in (paths.dataset, paths.production):
        parts = tracked.split("/")[:-1]
        for folder in ("/".join(parts[: i + 1]) + "/" for i in range(len(parts))):
            assert not scm.is_ignored(folder), f"git ignores {folder}, so DVC never sees {tracked}.dvc"
        assert not scm.is_ignored(f"{tracked}.dvc"), f"{tracked}.dvc must be committed"
        assert scm.is_ignored(f"{tracked}/"), f"{tracked}/ is DVC's to version, not git's"


def test_every_plot_template_is_built_in_or_ships_with_the_project():
    import json

    built_in = {"linear", "simple", "scatter", "smooth", "confusion", "confusion_normalized", "bar_horizontal"}
    for definition in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if isinstance(definition, str):  # a file shown as it is (the validation image grid): no template
            continue
        ((name, spec),) = definition.items()
        template = spec.get("template", "linear")
        if template in built_in:
            continue
        path = REPO / ".dvc" / "plots" / f"{template}.json"
        assert path.is_file(), f"plot '{name}' names template {template}, which is neither built in nor in .dvc/plots"
        text = path.read_text()
        assert "<DVC_METRIC_DATA>" in text, f"{path} has no data placeholder"
        json.loads(text)
