"""The detection budget: rate limit and unchanged-frame skip, on real frames."""

from __future__ import annotations

import numpy as np
import pytest

from sim.scene import Phase, SceneGeometry, ScenePerson, SceneState
from sim.scene_camera import SceneRenderer
from station.domain.model import CodeColour
from station.lane.frame_gate import FrameGate


def _frame(distance: float) -> np.ndarray:
    geo = SceneGeometry()
    person = ScenePerson(0, 36.6, CodeColour.GREEN, None)
    return SceneRenderer().render(SceneState(0.0, Phase.STANDING, person, distance, geo.face_box_at(distance), False))


def test_off_by_default_detects_every_frame() -> None:
    gate = FrameGate()
    f = _frame(0.55)
    assert all(gate.should_detect(f, i * 0.066) for i in range(10))
    assert (gate.detected, gate.reused) == (10, 0)


def test_unchanged_frames_reuse_until_max_reuse_and_a_change_is_detected_at_once() -> None:
    gate = FrameGate(diff_threshold=2.0, max_reuse_s=0.5)
    still, nearer = _frame(0.55), _frame(0.8)
    decisions = [gate.should_detect(still, i * 0.066) for i in range(10)]
    # Detected at 0, re-used until 0.5 s had passed since the last detection, then detected again.
    assert decisions[0] and not any(decisions[1:8]) and decisions[8]
    assert gate.should_detect(nearer, 0.7)  # the person moved: detect now


def test_rate_limit() -> None:
    gate = FrameGate(max_rate_hz=5.0, max_reuse_s=1.0)
    frames = [_frame(0.55 + 0.05 * (i % 2)) for i in range(15)]  # every frame changes
    decisions = [gate.should_detect(f, i / 15.0) for i, f in enumerate(frames)]
    assert sum(decisions) == 5  # 1 s at 15 fps, at most 5 detections


@pytest.mark.slow
def test_demo_lane_with_a_detection_budget_still_decides_right(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through the real pipeline: detection at most 5 Hz plus unchanged-frame skip; decisions unchanged."""
    from sim.demo import DemoRun
    from station.config import StationConfig

    cfg = StationConfig.model_validate({"detector": {"max_rate_hz": 5.0, "skip_unchanged_below": 1.5}})
    result = DemoRun(cfg, people=2, data_dir=tmp_path, fast=True).run(max_s=40)
    assert [p.expected for p, _ in result.decided] == [d.event.decision.value for _, d in result.decided]
    assert len(result.decided) == 2
    assert result.pipeline_stats.get("detections_reused", 0) > 0
