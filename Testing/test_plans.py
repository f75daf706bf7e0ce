"""plans.json schema: round trip, validation errors, overrides."""
import json

import pytest

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.plans import PLANS_FORMAT_VERSION, Architecture, Plans

KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]


def dataset_a_plans(**kw) -> Plans:
    return Plans(target_spacing=[4.0, 0.875, 0.875], patch_size=[16, 320, 320], kernels=KERNELS, strides=STRIDES, **kw)


def test_round_trip_through_json(tmp_path):
    plans = dataset_a_plans(median_shape=[20, 400, 400])
    path = plans.save(tmp_path / "plans.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format_version"] == PLANS_FORMAT_VERSION and "software_version" in data
    assert Plans.load(tmp_path) == plans  # a folder finds its plans.json


def test_overrides_reach_architecture_and_plan_fields():
    plans = dataset_a_plans().with_overrides(base_channels=8, iso_block="res2next", batch_size=1)
    assert plans.architecture == Architecture(base_channels=8, iso_block="res2next")
    assert plans.batch_size == 1
    with pytest.raises(PlanError, match="unknown plan field"):
        dataset_a_plans().with_overrides(no_such_field=1)


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format_version 99"),
    ({"patch_size": [15, 320, 320]}, "not divisible by the total stride"),
    ({"kernels": KERNELS[:4]}, "one kernel more than strides"),
    ({"labels": {"background": 0, "tumour": 2}}, "must be 0..N-1"),
    ({"target_spacing": [4.0, 0.875]}, "3 positive"),
])
def test_invalid_plans_are_refused_with_a_message(change, message):
    data = dataset_a_plans().to_dict()
    data.update(change)
    with pytest.raises(PlanError, match=message):
        Plans.from_dict(data)


def test_missing_field_and_bad_json_are_named(tmp_path):
    data = dataset_a_plans().to_dict()
    del data["strides"]
    with pytest.raises(PlanError, match="missing required field.*strides"):
        Plans.from_dict(data)
    (tmp_path / "plans.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plans.load(tmp_path / "plans.json")
    with pytest.raises(PlanError, match="not found"):
        Plans.load(tmp_path / "missing.json")
