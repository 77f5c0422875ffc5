"""Face temperature measurement: fitted registration, compensation terms, validity states, honesty."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.scene import SceneGeometry
from station.domain.model import Box, ThermalFrame
from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import (
    COMPENSATION_TERMS,
    CalibrationSample,
    MeasureState,
    ThermalCalibration,
    WarmupTracker,
    fit_compensation,
    fit_homography,
    hot_spot,
    measure_face,
)

IDENTITY = np.eye(3)
FACE = Box(10, 8, 20, 16)


def frame(img: np.ndarray, die_c: float = 30.0, t: float = 1.0) -> ThermalFrame:
    return ThermalFrame(np.asarray(img, dtype=np.float32), die_c=die_c, seq=3, t=t)


def face_image(skin: float = 35.0, spot: float = 35.9) -> np.ndarray:
    img = np.full((24, 32), 22.0)
    img[8:16, 10:20] = skin
    img[10:13, 13:16] = spot
    return img


# -- registration ------------------------------------------------------------------------------


def test_homography_is_recovered_from_noisy_point_pairs_with_its_rmse():
    truth = SceneGeometry().visible_to_thermal()
    truth[0, 1] = 0.004  # a little shear and perspective, as a real mounting has
    truth[2, 0] = 2e-5
    rng = np.random.default_rng(1)
    vis = np.array([[80, 60], [560, 70], [570, 420], [90, 410], [320, 240], [200, 330]], dtype=float)
    m = np.column_stack([vis, np.ones(len(vis))]) @ truth.T
    th = m[:, :2] / m[:, 2:3] + rng.normal(0, 0.05, (len(vis), 2))
    h, rmse = fit_homography(vis, th)
    assert 0.0 < rmse < 0.1
    probe = np.array([400.0, 150.0, 1.0])
    a, b = truth @ probe, h @ probe
    assert np.allclose(a[:2] / a[2], b[:2] / b[2], atol=0.1)


def test_four_exact_pairs_fit_exactly_and_collinear_pairs_are_refused():
    vis = [[0, 0], [640, 0], [640, 480], [0, 480]]
    th = [[1, 2], [30, 1], [31, 23], [0, 22]]
    _, rmse = fit_homography(vis, th)
    assert rmse < 1e-9
    with pytest.raises(ValueError):
        fit_homography([[0, 0], [1, 1], [2, 2], [3, 3]], [[0, 0], [1, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError):
        fit_homography(vis[:3], th[:3])


# -- compensation terms --------------------------------------------------------------------------


def test_every_term_is_recorded_and_the_reading_is_exactly_their_sum():
    cal = ThermalCalibration(
        IDENTITY,
        offset_c=1.2,
        roi_margin=0.0,
        ambient_gain=0.3,
        ambient_ref_c=22.0,
        face_ref_px=10.0,
        distance_gain=0.05,
        too_far_ratio=3.0,
        too_close_ratio=0.3,
    )
    m = measure_face(frame(face_image(), die_c=26.0), Box(10, 8, 20, 13), cal)  # 5 px tall: ratio 2
    t = m.terms
    assert m.state == MeasureState.MEASURED
    assert t["ambient_est_c"] == pytest.approx(18.0)  # die − 8
    assert t["ambient_c"] == pytest.approx(0.3 * (22.0 - 18.0))
    assert t["size_ratio"] == pytest.approx(2.0)
    assert t["distance_c"] == pytest.approx(0.05 * (t["skin_c"] - 18.0) * 1.0, abs=1e-3)
    assert m.core_c == pytest.approx(t["skin_c"] + sum(t[k] for k in COMPENSATION_TERMS), abs=0.006)


def test_a_room_sensor_replaces_the_die_estimate():
    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0, ambient_gain=0.5, room_c=25.0)
    m = measure_face(frame(face_image(), die_c=40.0), FACE, cal)
    assert m.terms["ambient_est_c"] == 25.0 and m.terms["ambient_c"] == pytest.approx(-1.5)


def test_blackbody_reference_corrects_drift_and_its_absence_is_a_state():
    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0, reference_box=(28, 20, 31, 23), reference_c=40.0)
    img = face_image()
    img[20:23, 28:31] = 39.4  # the sensor reads the 40 °C patch 0.6 low: the face reads 0.6 low too
    m = measure_face(frame(img), FACE, cal)
    assert m.state == MeasureState.MEASURED
    assert m.terms["reference_c"] == pytest.approx(0.6) and m.terms["reference_seen_c"] == pytest.approx(39.4)
    assert m.core_c == pytest.approx(35.9 + 1.0 + 0.6)
    img[20:23, 28:31] = 22.0  # someone stands in front of the blackbody
    assert measure_face(frame(img), FACE, cal).state == MeasureState.REFERENCE_MISSING
    img[20:23, 28:31] = 40.0
    img[21, 29] = 30.0  # half-covered: uneven
    assert measure_face(frame(img), FACE, cal).state == MeasureState.REFERENCE_MISSING


def test_fit_uses_only_terms_with_enough_span():
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(40):
        amb = rng.uniform(18, 26)
        ratio = rng.uniform(0.8, 1.25)
        skin = rng.uniform(34.5, 37.5)
        core = skin + 1.3 + 0.2 * (22.0 - amb) + 0.04 * (skin - amb) * (ratio - 1.0)
        samples.append(CalibrationSample(skin, core + rng.normal(0, 0.02), amb, ratio))
    fit = fit_compensation(samples)
    assert fit.fitted == ("offset", "ambient", "distance")
    assert fit.offset_c == pytest.approx(1.3, abs=0.05)
    assert fit.ambient_gain == pytest.approx(0.2, abs=0.02)
    assert fit.distance_gain == pytest.approx(0.04, abs=0.02)
    assert fit.rmse_c < 0.05
    narrow = [CalibrationSample(s.skin_c, s.reference_core_c, 22.0, 1.0) for s in samples]
    assert fit_compensation(narrow).fitted == ("offset",)


# -- validity states -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,box,others,state",
    [
        ({}, None, (), MeasureState.NO_FACE),
        ({"face_ref_px": 8.0}, Box(10, 8, 20, 12), (), MeasureState.TOO_FAR),  # 4 px tall for 8 calibrated
        ({"face_ref_px": 8.0}, Box(2, 2, 30, 22), (), MeasureState.TOO_CLOSE),  # 20 px tall for 8
        ({}, FACE, (Box(22, 8, 30, 15),), MeasureState.SEVERAL_PEOPLE),
        ({}, FACE, (Box(22, 8, 24, 10),), MeasureState.MEASURED),  # a small face far behind is fine
    ],
)
def test_states(kwargs, box, others, state):
    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0, **kwargs)
    assert measure_face(frame(face_image()), box, cal, others=others).state == state


def test_warm_up_by_time_and_by_die_rate():
    w = WarmupTracker(min_s=10.0)
    assert w.update(0.0, 30.0) and w.update(9.0, 30.0) and not w.update(10.5, 30.0)
    r = WarmupTracker(max_rate_c_per_min=0.5)
    assert not r.update(0.0, 30.0)  # no history yet: nothing says it is warming
    assert r.update(3.0, 30.1)  # 2 °C/min
    flat = WarmupTracker(max_rate_c_per_min=0.5)
    assert not any(flat.update(t, 30.0 + 0.001 * t) for t in range(0, 20))
    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0)
    assert measure_face(frame(face_image()), FACE, cal, warming_up=True).state == MeasureState.WARMING_UP


def test_the_lane_reports_warming_up_from_the_frames_it_sees():
    from station.domain.model import FaceDetection, FaceObservation

    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0, warmup_s=60.0)
    ln = ScreeningLane(ScreeningSettings(min_face_px=5, face_stable_s=0.0, temperature_timeout_s=1.0), ScreeningPolicy(), cal)
    for i in range(12):
        t = i * 0.125
        v = ln.on_faces(FaceObservation(i, t, t, (FaceDetection(FACE, 0.9),), (32, 24), 1.0))
        v = v or ln.on_thermal(frame(face_image(), t=t))
        if v is not None:
            break
    assert v is not None and v.reason == "no_valid_temperature:warming_up"


# -- honesty: every number comes from the frame ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    base=st.floats(15.0, 30.0),
    skin=st.floats(20.0, 45.0),
    delta=st.floats(-6.0, 6.0),
    die=st.floats(20.0, 45.0),
)
def test_readings_follow_the_frame_and_are_never_clamped(base, skin, delta, die):
    """Shift the face pixels by delta: the skin statistic and the reading move by exactly delta (the
    distance term scales with skin − ambient, so it is off here), whatever range that lands in."""
    cal = ThermalCalibration(IDENTITY, offset_c=1.1, roi_margin=0.0, ambient_gain=0.2)
    img = np.full((24, 32), base)
    img[8:16, 10:20] = skin
    img[11, 14] = skin + 0.9
    a = measure_face(frame(img, die_c=die), FACE, cal)
    img2 = img.copy()
    img2[8:16, 10:20] += delta
    b = measure_face(frame(img2, die_c=die), FACE, cal)
    expect_skin, _ = hot_spot(img[8:16, 10:20].astype(np.float32))
    assert a.skin_c == pytest.approx(expect_skin, abs=1e-3)
    assert b.skin_c - a.skin_c == pytest.approx(delta, abs=2e-3)
    for m in (a, b):
        if m.state in (MeasureState.MEASURED, MeasureState.OUT_OF_RANGE):
            assert m.core_c == pytest.approx(m.skin_c + sum(m.terms[k] for k in COMPENSATION_TERMS), abs=0.006)
            # a measured value is never nudged into the normal band, and an invalid one is still reported
            assert (m.state == MeasureState.MEASURED) == (cal.valid_min_c <= m.core_c <= cal.valid_max_c)
        else:
            assert m.state == MeasureState.COLD_ROI and m.core_c is None and m.skin_c < 30.0


def test_a_low_reading_stays_low():
    # The vendor SDK turns 34-36 °C readings into random "36.1x" values (thermal.md §2.7 item 4): not here.
    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0)
    m = measure_face(frame(face_image(skin=33.0, spot=33.4)), FACE, cal)
    assert m.state == MeasureState.MEASURED and m.core_c == pytest.approx(34.4)
    m = measure_face(frame(face_image(skin=31.0, spot=31.5)), FACE, cal)
    assert m.state == MeasureState.OUT_OF_RANGE and m.core_c == pytest.approx(32.5)  # reported, flagged
    repeat = [measure_face(frame(face_image(skin=33.0, spot=33.4)), FACE, cal).core_c for _ in range(5)]
    assert len(set(repeat)) == 1  # deterministic: no random digits anywhere


# -- the renderer's scene features, measured through the real byte codec -------------------------------


def _through_bytes(img: np.ndarray, die: float, t: float = 0.0) -> ThermalFrame:
    from drivers.thermal.gy_protocol import FrameParser, encode_frame, image_to_module_order

    (item,) = FrameParser().feed(encode_frame(image_to_module_order(img), int(round(die * 100))))
    return ThermalFrame(item.pixels_c, item.die_c, 0, t)


def test_scene_features_blackbody_distractor_two_people_and_warm_up():
    from sim.thermal_render import ThermalSceneRenderer

    geo = SceneGeometry()
    near, far = geo.face_box_at(0.55), geo.face_box_at(0.6)
    cal = ThermalCalibration(geo.visible_to_thermal(), offset_c=1.35)
    plain = ThermalSceneRenderer(None, noise_c=0.0, geometry=geo)
    base = measure_face(_through_bytes(*plain.render_people([(37.0, near)])), near, cal)
    assert base.state == MeasureState.MEASURED and base.core_c == pytest.approx(37.0, abs=0.1)

    # a 60 °C cup at the edge of the picture: outside the face, it changes nothing
    cup = ThermalSceneRenderer(None, noise_c=0.0, geometry=geo, distractors=[(Box(1, 18, 4, 23), 60.0)])
    img, die = cup.render_people([(37.0, near)])
    assert img.max() == pytest.approx(60.0, abs=0.01)
    assert measure_face(_through_bytes(img, die), near, cal).core_c == base.core_c

    # a blackbody patch reads its set-point, a drifted unit reads it low, the reference term undoes it
    bb = ((28, 19, 31, 22), 40.0)
    drift = ThermalSceneRenderer(None, noise_c=0.0, geometry=geo, blackbody=bb, sensor_offset_c=-0.7)
    m = measure_face(
        _through_bytes(*drift.render_people([(37.0, near)])),
        near,
        ThermalCalibration(geo.visible_to_thermal(), offset_c=1.35, reference_box=bb[0], reference_c=40.0),
    )
    assert m.terms["reference_seen_c"] == pytest.approx(39.3, abs=0.01) and m.core_c == pytest.approx(base.core_c, abs=0.02)

    # two people side by side: whose temperature would it be?
    shifted = Box(far.x1 + 200, far.y1, far.x2 + 200, far.y2)
    img, die = plain.render_people([(36.5, shifted), (37.0, near)])
    assert measure_face(_through_bytes(img, die), near, cal, others=[shifted]).state == MeasureState.SEVERAL_PEOPLE

    # the die warms from the room towards room + 8 °C: the warm-up tracker sees it
    warm = ThermalSceneRenderer(None, noise_c=0.0, geometry=geo, warmup_tau_s=600.0)
    tracker = WarmupTracker(max_rate_c_per_min=0.2)
    states = [tracker.update(t, warm.render_people([], now=t)[1]) for t in np.arange(0.0, 10.0, 0.25)]
    assert warm.die_c(0.0) == pytest.approx(22.0) and states[-1] is True
    assert ThermalSceneRenderer(None, geometry=geo).die_c(5.0) == pytest.approx(30.0)


def test_only_measured_readings_decide_everything_else_retries():
    """A blackbody configured but covered: the lane never uses those readings and ends in retry."""
    from station.domain.model import Decision, FaceDetection, FaceObservation

    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0, reference_box=(28, 20, 31, 23), reference_c=40.0)
    ln = ScreeningLane(ScreeningSettings(min_face_px=5, face_stable_s=0.0, temperature_timeout_s=1.0), ScreeningPolicy(), cal)
    img = face_image(skin=37.0, spot=38.5)  # would be a fever if it were measured
    v = None
    for i in range(12):
        t = i * 0.125
        v = ln.on_faces(FaceObservation(i, t, t, (FaceDetection(FACE, 0.9),), (32, 24), 1.0)) or ln.on_thermal(frame(img, t=t))
        if v is not None:
            break
    assert v is not None and v.decision == Decision.RETRY and v.reason == "no_valid_temperature:reference_missing"
    assert v.temperature_c is None and v.temperature["frames_by_state"] == {
        "reference_missing": v.temperature["frames_by_state"]["reference_missing"]
    }


def test_the_lane_refuses_a_reading_while_a_second_person_is_as_near():
    from station.domain.model import Decision, FaceDetection, FaceObservation

    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0)
    ln = ScreeningLane(ScreeningSettings(min_face_px=5, face_stable_s=0.0, temperature_timeout_s=1.0), ScreeningPolicy(), cal)
    beside = Box(22, 8, 30, 16)  # as tall as the screened face
    v = None
    for i in range(12):
        t = i * 0.125
        obs = FaceObservation(i, t, t, (FaceDetection(FACE, 0.9), FaceDetection(beside, 0.9)), (32, 24), 1.0)
        v = ln.on_faces(obs) or ln.on_thermal(frame(face_image(), t=t))
        if v is not None:
            break
    # Two people side by side at the gate are asked to come one at a time (issue 16): no reading of
    # either is put on a record (before the queue lane this was no_valid_temperature:several_people).
    assert v is not None and v.decision == Decision.RETRY and v.reason == "one_at_a_time" and v.temperature_c is None
