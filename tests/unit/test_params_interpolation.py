"""No params value may hold an OmegaConf interpolation (issue 21, item 6).

DVC rewrites ``params.yaml`` through OmegaConf on ``dvc exp run --set-param`` (every tuning trial),
which resolves ``${oc.env:NAME}`` into the environment variable's value: a secret would be written
into ``params.yaml``, the experiment's commit and the tuning report.
"""

from pathlib import Path

import pytest
import yaml

from stages.core.config import load_params, parse_params
from stages.core.errors import ConfigError

SECRET = "${oc.env:AWS_SECRET_ACCESS_KEY}"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"report": {"title": SECRET}}, "report.title"),
        ({"report": {"title": f"detector {SECRET} v2"}}, "report.title"),
        ({"report": {"title": "${train.model}"}}, "report.title"),
        ({"report": {"title": "\\" + SECRET}}, "report.title"),  # escaped: unescaped by the first rewrite
        ({"train": {"model": SECRET}}, "train.model"),
        ({"paths": {"production": "models/${oc.env:HOME}"}}, "paths.production"),
        (
            {"tune": {"space": {"train.optimizer": {"type": "categorical", "choices": ["SGD", SECRET]}}}},
            "tune.space.train.optimizer.choices.1",
        ),
        ({"evaluate": {"min_class_map50": {SECRET: 0.5}}}, f"evaluate.min_class_map50.{SECRET}"),
    ],
)
def test_interpolation_is_refused_naming_the_key(data: dict, key: str):
    with pytest.raises(ConfigError, match="interpolation") as err:
        parse_params(data)
    assert err.value.key == key


def test_interpolation_in_the_file_is_refused_before_anything_reads_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"report": {"title": SECRET}}))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert err.value.key == "report.title" and err.value.path == path
    assert "hunter2" not in str(err.value)


def test_a_dollar_sign_alone_is_an_ordinary_character():
    params = parse_params({"report": {"title": "US$ 5 detector, $HOME, {braces}"}})
    assert params.report.title == "US$ 5 detector, $HOME, {braces}"


def test_what_is_refused_is_what_dvc_resolves_and_what_passes_survives_its_rewrite(tmp_path: Path, monkeypatch):
    """DVC's own ``--set-param`` rewrite (the one every tuning trial does) resolves the refused values
    and leaves the accepted ones as they are: the check draws the line where DVC does."""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    path = tmp_path / "params.yaml"
    accepted, refused = "US$ 5 detector, $HOME, {braces}", "\\" + SECRET
    path.write_text(yaml.safe_dump({"report": {"title": SECRET, "accepted": accepted, "escaped": refused, "n": 1}}))
    apply_overrides(path, ["report.n=2"])
    report = yaml.safe_load(path.read_text())["report"]
    assert report["title"] == "hunter2"  # the secret lands in the file
    assert report["accepted"] == accepted
    assert report["escaped"] == SECRET  # the escape is gone: the next rewrite resolves it
