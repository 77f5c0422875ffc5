"""What the lane says to the public: reason words, the decision's prompt and the next step.

Pure and total: every reason the lane records (``station.domain.screening``: ``fever``, ``no_code``,
``code_expired:<why>``, ``no_valid_temperature:<state>`` …) reads as words in Chinese and English,
and a reason this table has never seen still gets a sensible phrase from its decision. The same
phrases drive the operator display (the reason line and the next-step line) and the voice (one
pre-recorded clip per prompt key and language, ``station/assets/voice``).

A reason is ``head[:detail][;temperature:not_screened_exit]``: the words come from ``head:detail``
when the table has that pair, else from ``head``, else from the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

LANGUAGES = ("zh", "en")


@dataclass(frozen=True, slots=True)
class Phrase:
    """One thing said to the public, in both languages; ``key`` names its voice clip."""

    key: str
    zh: str
    en: str

    def text(self, language: str) -> str:
        """Return the phrase in ``language`` (Chinese for anything but ``"en"``)."""
        return self.en if language == "en" else self.zh

    def as_dict(self) -> dict[str, str]:
        """Return the phrase as the display's messages carry it."""
        return {"key": self.key, "zh": self.zh, "en": self.en}


def _p(key: str, zh: str, en: str) -> Phrase:
    return Phrase(key, zh, en)


# -- prompts: the next step, or what a decision means for the person; each has a voice clip -------
PROMPTS: dict[str, Phrase] = {
    p.key: p
    for p in (
        _p("look_at_screen", "请看屏幕", "Look at the screen"),
        _p("show_code", "请出示健康码", "Show your health code"),
        _p("place_id_card", "请刷身份证", "Place your ID card"),
        _p("show_code_or_id", "请出示健康码或刷身份证", "Show your health code or place your ID card"),
        _p("one_at_a_time", "请逐一通过", "One at a time please"),
        _p("step_closer", "请靠近一点", "Please step closer"),
        _p("step_back", "请退后一点", "Please step back a little"),
        _p("go_ahead", "体温正常，请通行", "Temperature normal, please go ahead"),
        _p("go_ahead_plain", "请通行", "Please go ahead"),
        _p("step_aside_recheck", "体温异常，请到旁边复测", "Temperature high, please step aside for a re-check"),
        _p("code_refused", "健康码异常，请联系工作人员", "Health code not accepted, please see staff"),
        _p("wait_for_staff", "请稍候，工作人员核验", "Please wait, staff will check"),
        _p("try_again", "请重新检测", "Please try again"),
    )
}

SILENT_STEPS = frozenset({"look_at_screen"})
"""Next-step prompts only shown, never spoken: said to everyone who steps up, they would drown the rest."""


# -- reason words: why a decision was made, for the display's reason line ---------------------------
REASON_WORDS: dict[str, Phrase] = {
    p.key: p
    for p in (
        _p("ok", "体温正常，健康码有效", "Temperature normal, health code valid"),
        _p("temperature_only", "体温正常，请通行", "Temperature normal, please go ahead"),
        _p("fever", "体温异常", "Temperature high"),
        _p("fever_soft_policy", "体温偏高，请工作人员复核", "Temperature high, staff will check"),
        _p("code_red", "健康码为红码", "Red health code"),
        _p("code_yellow", "健康码为黄码", "Yellow health code"),
        _p("code_uncoloured", "健康码无颜色，需人工核验", "Code carries no colour, staff will check"),
        _p("code_expired", "健康码已过期", "Health code expired"),
        _p("expired", "健康码已过期", "Health code expired"),
        _p("code_unverifiable", "健康码无法核验", "Health code cannot be verified"),
        _p("code_unverifiable:replay", "此健康码已被使用", "This code was already used"),
        _p("code_unverifiable:clock_unsynced", "设备时间未校准，请工作人员核验健康码", "Station clock not set, staff will check the code"),
        _p("replay", "此健康码已被使用", "This code was already used"),
        _p("code_invalid", "不是有效的健康码", "Not a valid health code"),
        _p("no_code", "请出示健康码", "Show your health code"),
        _p("left_before_decision", "未完成检测", "Screening not finished"),
        _p("sensor_fault", "测温设备故障，请人工核验", "Thermal sensor fault, staff will check"),
        _p("no_valid_temperature", "未测到体温，请看屏幕", "No temperature reading, look at the screen"),
        _p("no_temperature", "未测到体温，请看屏幕", "No temperature reading, look at the screen"),
        _p("no_valid_temperature:several_people", "请逐一通过", "One at a time please"),
        _p("several_people", "请逐一通过", "One at a time please"),
        _p("one_at_a_time", "请逐一通过", "One at a time please"),
        _p("no_valid_temperature:too_far", "请靠近一点", "Please step closer"),
        _p("no_valid_temperature:too_close", "请退后一点", "Please step back a little"),
        _p("no_valid_temperature:cold_roi", "请露出额头", "Please uncover your forehead"),
        _p("no_valid_temperature:warming_up", "测温设备预热中", "Thermal sensor warming up"),
        _p("no_valid_temperature:unstable", "请站稳看屏幕", "Please stand still and look at the screen"),
        _p("no_valid_temperature:sensor_fault", "测温设备故障", "Thermal sensor fault"),
        _p("idcard_unverifiable", "身份证无法核验，需人工核验", "ID card could not be verified, staff will check"),
        _p("staff", "工作人员已核验", "Checked by staff"),
        _p("staff:id_checked", "工作人员已核验身份证", "ID checked by staff"),
        _p("staff:paper_certificate", "工作人员已核验纸质证明", "Paper certificate checked by staff"),
        _p("staff:escorted", "工作人员陪同通行", "Escorted by staff"),
    )
}

DECISION_WORDS: dict[str, Phrase] = {
    "pass": _p("pass", "请通行", "Please go ahead"),
    "deny_fever": _p("deny_fever", "体温异常", "Temperature high"),
    "deny_code": _p("deny_code", "健康码异常", "Health code not accepted"),
    "retry": _p("retry", "请重试", "Please try again"),
    "manual_check": _p("manual_check", "请等待工作人员核验", "Please wait for a staff check"),
}
GENERIC_WORDS = _p("generic", "请联系工作人员", "Please see staff")
"""The words of a reason nobody foresaw under a decision nobody foresaw either."""


def split_reason(reason: str) -> tuple[str, str]:
    """Return a recorded reason's ``(head, detail)``, without the one-way exit note.

    ``"code_expired:exp_past;temperature:not_screened_exit"`` → ``("code_expired", "exp_past")``.
    """
    main = str(reason).split(";", 1)[0].strip()
    head, _, detail = main.partition(":")
    return head.strip(), detail.strip()


def reason_words(reason: str, decision: str | None = None) -> Phrase:
    """Return the words for ``reason``: its ``head:detail``, its head, else the decision's; never raise."""
    head, detail = split_reason(reason)
    if detail and f"{head}:{detail}" in REASON_WORDS:
        return REASON_WORDS[f"{head}:{detail}"]
    if head in REASON_WORDS:
        return REASON_WORDS[head]
    return DECISION_WORDS.get(str(decision), GENERIC_WORDS)


def decision_prompt(decision: str, reason: str, *, id_reader: bool = False) -> Phrase | None:
    """Return what is said to the person a decision was made for, or None when they are gone.

    ``id_reader``: the lane has an ID card reader, so a person without a code is told to use it.
    """
    head, detail = split_reason(reason)
    exit_only = "not_screened_exit" in str(reason)  # one-way mode: nobody measured this person
    if decision == "pass":
        return PROMPTS["go_ahead_plain" if exit_only else "go_ahead"]
    if decision == "deny_fever" or head == "fever_soft_policy":
        return PROMPTS["step_aside_recheck"]
    if decision == "deny_code":
        return PROMPTS["code_refused"]
    if decision == "retry":
        if head == "left_before_decision":
            return None
        if head == "no_code":
            return PROMPTS["show_code_or_id" if id_reader else "show_code"]
        if head in ("several_people", "one_at_a_time") or detail == "several_people":
            return PROMPTS["one_at_a_time"]
        if detail == "too_far":
            return PROMPTS["step_closer"]
        if detail == "too_close":
            return PROMPTS["step_back"]
        if head in ("no_valid_temperature", "no_temperature"):
            return PROMPTS["look_at_screen"]
        return PROMPTS["try_again"]
    return PROMPTS["wait_for_staff"]


@dataclass(frozen=True, slots=True)
class LaneProgress:
    """Where the screened person stands, as far as the next step depends on it (``ScreeningLane.progress``)."""

    state: str  # "idle", "screening", "decided"
    temperature_done: bool = False  # a stable reading, or none needed (one-way exit)
    measure_state: str = ""  # why the last thermal frame did or did not measure the face
    code_shown: bool = False  # a code that could be judged
    invalid_code_shown: bool = False  # only something that is not a health code so far
    waited_s: float = 0.0  # since the face was locked
    code_timeout_s: float = 5.0
    code_required: bool = True  # False: a temperature-only lane never asks for a code or a card


ID_HINT_AFTER = 0.4
"""Share of the code timeout after which a person still without a code is offered the ID card reader."""


def next_step(progress: LaneProgress, *, id_reader: bool = False) -> Phrase | None:
    """Return the next-step prompt for the lane's state; None once decided (the decision's prompt stands)."""
    if progress.state == "idle":
        return PROMPTS["look_at_screen"]
    if progress.state != "screening":
        return None
    if not progress.temperature_done:
        if progress.measure_state == "several_people":
            return PROMPTS["one_at_a_time"]
        if progress.measure_state == "too_far":
            return PROMPTS["step_closer"]
        if progress.measure_state == "too_close":
            return PROMPTS["step_back"]
        return PROMPTS["look_at_screen"]
    if progress.code_shown or not progress.code_required:
        return PROMPTS["look_at_screen"]
    if id_reader and progress.invalid_code_shown:
        return PROMPTS["place_id_card"]
    if id_reader and progress.waited_s >= ID_HINT_AFTER * progress.code_timeout_s:
        return PROMPTS["show_code_or_id"]
    return PROMPTS["show_code"]


def spoken(step: Phrase | None) -> bool:
    """Return whether a next-step prompt is spoken as well as shown."""
    return step is not None and step.key not in SILENT_STEPS


@dataclass(frozen=True, slots=True)
class VolumeSchedule:
    """The speaker's volume by time of day: quieter during ``quiet_hours`` (``"22:00-07:00"``, may wrap midnight)."""

    volume: int = 80  # percent
    quiet_volume: int = 30
    quiet_from_min: int | None = None  # minutes after midnight; None: no quiet hours
    quiet_to_min: int | None = None

    @classmethod
    def parse(cls, volume: int, quiet_hours: str, quiet_volume: int) -> VolumeSchedule:
        """Return the schedule for ``quiet_hours`` ``"HH:MM-HH:MM"`` (``""``: none); raise ValueError if malformed."""
        text = quiet_hours.strip()
        if not text:
            return cls(volume, quiet_volume)
        start, sep, end = text.partition("-")
        if not sep:
            raise ValueError(f"quiet_hours must be HH:MM-HH:MM, not {quiet_hours!r}")
        return cls(volume, quiet_volume, _minutes(start), _minutes(end))

    def volume_at(self, hour: int, minute: int) -> int:
        """Return the volume for a local time of day."""
        lo, hi = self.quiet_from_min, self.quiet_to_min
        if lo is None or hi is None or lo == hi:
            return self.volume
        now = hour * 60 + minute
        quiet = lo <= now < hi if lo < hi else (now >= lo or now < hi)
        return self.quiet_volume if quiet else self.volume


def _minutes(hhmm: str) -> int:
    h, sep, m = hhmm.strip().partition(":")
    if not sep or not h.isdigit() or not m.isdigit() or len(m) != 2 or not 0 <= int(h) <= 23 or not 0 <= int(m) <= 59:
        raise ValueError(f"a time of day must be HH:MM, not {hhmm!r}")
    return int(h) * 60 + int(m)
