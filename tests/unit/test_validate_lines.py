import pytest

from stages.data.validation.labels import check_label_lines, outside_fraction
from stages.data.validation.problems import CODES


def codes(lines, num_classes=3, size=(100, 100)):
    boxes, problems = check_label_lines(lines, "x.txt", num_classes, size, min_box_pixels=2.0, duplicate_iou=0.95)
    return boxes, [(p.code, p.line) for p in problems]


def test_valid_lines_give_boxes_and_no_problem():
    boxes, found = codes(["0 0.5 0.5 0.2 0.2", "", "2 0.1 0.1 0.1 0.1"])
    assert found == []
    assert [b[0] for b in boxes] == [0, 2]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("0 0.5 0.5 0.2", "label_field_count"),
        ("0 0.5 0.5 0.2 0.2 0.9", "label_field_count"),
        ("0 a 0.5 0.2 0.2", "label_not_number"),
        ("0 nan 0.5 0.2 0.2", "label_not_finite"),
        ("0 0.5 inf 0.2 0.2", "label_not_finite"),
        ("1.5 0.5 0.5 0.2 0.2", "class_not_integer"),
        ("3 0.5 0.5 0.2 0.2", "class_out_of_range"),
        ("-1 0.5 0.5 0.2 0.2", "class_out_of_range"),
        ("0 0.5 0.5 0 0.2", "box_non_positive"),
        ("0 0.5 0.5 0.2 -0.1", "box_non_positive"),
        ("0 1.2 0.5 0.2 0.2", "box_out_of_bounds"),
        ("0 0.5 0.5 1.2 0.2", "box_out_of_bounds"),
        ("0 0.95 0.5 0.2 0.2", "box_partly_outside"),
        ("0 0.02 0.02 0.2 0.2", "box_mostly_outside"),
        ("0 0.5 0.5 0.01 0.01", "box_tiny"),
    ],
)
def test_each_malformed_line_is_reported_with_its_line_number(line, code):
    _boxes, found = codes(["0 0.5 0.5 0.2 0.2", line])
    assert found == [(code, 2)]


def test_duplicate_boxes_are_reported_once_per_duplicate():
    boxes, found = codes(["1 0.5 0.5 0.2 0.2", "1 0.5 0.5 0.2 0.2", "2 0.5 0.5 0.2 0.2"])
    assert found == [("box_duplicate", 2)]
    assert len(boxes) == 2  # a different class at the same place is not a duplicate


def test_every_problem_is_reported_not_only_the_first():
    _boxes, found = codes(["x 0.5 0.5 0.1 0.1", "0 0.5", "9 0.5 0.5 0.1 0.1"])
    assert [c for c, _ in found] == ["label_not_number", "label_field_count", "class_out_of_range"]


def test_codes_have_a_severity():
    assert set(CODES.values()) == {"error", "warning"}


def test_outside_fraction_threshold_comes_from_params():
    _b, strict = codes_with(["0 0.95 0.5 0.2 0.2"], max_outside_fraction=0.1)
    assert strict == [("box_mostly_outside", 1)]


def codes_with(lines, **kwargs):
    boxes, problems = check_label_lines(lines, "x.txt", 3, (100, 100), 2.0, 0.95, **kwargs)
    return boxes, [(p.code, p.line) for p in problems]


def test_outside_fraction():
    assert outside_fraction(0.5, 0.5, 0.2, 0.2) == pytest.approx(0.0, abs=1e-9)
    assert outside_fraction(1.0, 0.5, 0.2, 0.2) == pytest.approx(0.5)


@pytest.mark.parametrize("line", ["0 0.5 0.5 1e-200 1e-200", "0 0 0 5e-324 5e-324", "0 1e-300 0.5 1e-300 0.2"])
def test_tiny_boxes_do_not_divide_by_zero(line):
    """w * h underflows to 0 for boxes this small; the outside check must still give an answer."""
    _boxes, found = codes([line])
    assert all(code in CODES for code, _ in found)
    assert 0.0 <= outside_fraction(*(float(v) for v in line.split()[1:])) <= 1.0
