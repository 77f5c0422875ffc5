"""The district tree (station/centre/tree.py): parsing, validation that names key/value/allowed, roll-ups with
"unassigned", and edits that keep the admin's comments."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.centre.tree import Tree, TreeError, apply_edit, parse_tree, rollup, stations_under
from tests.support.centre_screen import TREE


def _tree(text: str = TREE) -> Tree:
    tree = parse_tree(text)
    assert isinstance(tree, Tree), tree
    return tree


def test_the_registry_maps_stations_to_checkpoints_by_name_and_by_site() -> None:
    tree = _tree()
    assert tree.locate("gate-a", "st-01") == "east/g1/gate"
    assert tree.locate("market", "anything") == "west/g2/market", "site/* places every station of the site"
    assert tree.locate("gate-a", "st-09") is None and tree.locate("elsewhere", "x") is None
    assert sorted(tree.nodes()) == ["", "east", "east/g1", "east/g1/gate", "west", "west/g2", "west/g2/market"]
    assert tree.root.name == "测试区" and tree.nodes()["east/g1/gate"].level == "checkpoint"
    text = TREE.replace('stations = ["market/*"]', 'stations = ["market/*", "gate-a/st-03"]')
    assert _tree(text).locate("gate-a", "st-03") == "west/g2/market", "a named station wins over nothing"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[towns.unassigned]\nname = 'x'\n", "towns.unassigned: the key 'unassigned' is reserved"),
        ("[towns.'a b']\nname = 'x'\n", "towns.a b: key 'a b' not allowed (1-64 of A-Z a-z 0-9 _ -)"),
        (
            "[towns.t]\nname = 'x'\ncolour = 'red'\n",
            "towns.t.colour: unknown key (allowed for a town: escalate_after_min, grids, name, responders)",
        ),
        ("[towns.t]\nname = ''\n", "towns.t.name = '': expected text of 1-80 characters"),
        ('[towns.t]\nname = "a\\u0007b"\n', "towns.t.name = 'a\\x07b': expected text"),
        (
            "[towns.t.grids.g.checkpoints.c]\nname = 'c'\nstations = 'gate-a/st-01'\n",
            "towns.t.grids.g.checkpoints.c.stations = 'gate-a/st-01': expected a list",
        ),
        (
            "[towns.t.grids.g.checkpoints.c]\nname = 'c'\nstations = ['gate-a']\n",
            'towns.t.grids.g.checkpoints.c.stations[0] = \'gate-a\': expected "site/station" or "site/*"',
        ),
        (
            "[towns.t.grids.g.checkpoints.c]\nname = 'c'\nstations = ['s/a']\n"
            "[towns.t.grids.g.checkpoints.d]\nname = 'd'\nstations = ['s/a']\n",
            "towns.t.grids.g.checkpoints.d.stations[0] = 's/a': already placed at checkpoint 't/g/c'",
        ),
        (
            "[towns.t.grids.g.checkpoints.c.x]\nname = 'c'\n",
            "towns.t.grids.g.checkpoints.c.x: unknown key (allowed for a checkpoint: escalate_after_min, name, responders, stations)",
        ),
        ("cities = 1\n", "cities: unknown top-level key (allowed: district, towns)"),
        ("[towns\n", "registry is not TOML"),
    ],
)
def test_a_bad_registry_names_the_key_the_value_and_what_is_allowed(text: str, problem: str) -> None:
    result = parse_tree(text)
    assert isinstance(result, TreeError)
    assert any(p.startswith(problem) for p in result.problems), result.problems


def _escalating(district: str = "", east: str = "", g1: str = "", gate: str = "") -> str:
    """Return the test tree with ``escalate_after_min = <value>`` lines at the nodes given (TOML values as text)."""
    text = TREE
    for header, value in (("[district]\n", district), ("[towns.east]\n", east), ("[towns.east.grids.g1]\n", g1)):
        if value:
            text = text.replace(header, f"{header}escalate_after_min = {value}\n")
    if gate:
        text = text.replace(
            "[towns.east.grids.g1.checkpoints.gate]\n", f"[towns.east.grids.g1.checkpoints.gate]\nescalate_after_min = {gate}\n"
        )
    return text


def test_each_node_may_set_its_escalation_delay_and_a_node_without_it_takes_its_nearest_ancestors() -> None:
    tree = _tree(_escalating(district="30", east="15", g1="5"))
    assert tree.escalate_after_s("east/g1/gate", 600.0) == 300.0, "the checkpoint without it: its grid's"
    assert tree.escalate_after_s("east/g1", 600.0) == 300.0
    assert tree.escalate_after_s("east", 600.0) == 900.0
    assert tree.escalate_after_s("west/g2/market", 600.0) == 1800.0, "nothing set on the west side: the district's"
    assert tree.escalate_after_s("", 600.0) == 1800.0
    assert tree.nodes()["east/g1/gate"].escalate_after_min is None and tree.nodes()["east/g1"].escalate_after_min == 5.0
    plain = _tree()
    assert {plain.escalate_after_s(p, 600.0) for p in plain.nodes()} == {600.0}, "no node sets it: the centre's option"
    assert plain.escalate_after_s("nowhere", 42.0) == 42.0
    fine = _tree(_escalating(gate="0.5", g1="1440", east="2.5"))
    assert (fine.escalate_after_s("east/g1/gate", 600.0), fine.escalate_after_s("east/g1", 0), fine.escalate_after_s("east", 0)) == (
        30.0,
        86400.0,
        150.0,
    )
    assert fine.escalate_after_s("", 600.0) == 600.0, "the district without it: the centre's option"


@pytest.mark.parametrize(
    ("where", "value", "shown"),
    [
        ("district", "0", "0"),
        ("east", "-5", "-5"),
        ("g1", "1441", "1441"),
        ("gate", "1440.5", "1440.5"),
        ("g1", "true", "True"),
        ("east", '"10"', "'10'"),
        ("g1", "nan", "nan"),
        ("district", "inf", "inf"),
        ("gate", "-inf", "-inf"),
        ("east", "[5]", "[5]"),
        ("g1", "{min = 5}", "{'min': 5}"),
        ("gate", "2024-01-01", "datetime.date(2024, 1, 1)"),
    ],
)
def test_a_bad_escalation_delay_names_the_key_path_the_value_and_what_is_allowed(where: str, value: str, shown: str) -> None:
    result = parse_tree(_escalating(**{where: value}))
    assert isinstance(result, TreeError)
    key = {"district": "district", "east": "towns.east", "g1": "towns.east.grids.g1", "gate": "towns.east.grids.g1.checkpoints.gate"}
    assert result.problems == [f"{key[where]}.escalate_after_min = {shown}: expected a number of minutes, more than 0 and at most 1440"]


def test_the_escalation_delay_survives_every_edit_from_the_page() -> None:
    text = _escalating(district="30", east="15", g1="5", gate="2")
    text = apply_edit(text, {"op": "add", "parent": "east/g1", "key": "school", "name": "学校卡口"})[0]
    text = apply_edit(text, {"op": "assign", "station": "gate-a/st-02", "checkpoint": "east/g1/school"})[0]
    text = apply_edit(text, {"op": "rename", "path": "", "name": "新区"})[0]
    text = apply_edit(text, {"op": "rename", "path": "east/g1/gate", "name": "东大门"})[0]
    text = apply_edit(text, {"op": "move", "path": "east/g1", "parent": "west"})[0]
    tree = _tree(text)
    written = {p: n.escalate_after_min for p, n in tree.nodes().items() if n.escalate_after_min is not None}
    assert written == {"": 30.0, "east": 15.0, "west/g1": 5.0, "west/g1/gate": 2.0}
    assert tree.escalate_after_s("west/g1/school", 600.0) == 300.0, "the new checkpoint inherits from the grid it was added to"
    assert tree.escalate_after_s("west", 600.0) == 1800.0 and tree.escalate_after_s("west/g2/market", 600.0) == 1800.0


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_parsing_is_total_over_any_text(text: str) -> None:
    assert isinstance(parse_tree(text), (Tree, TreeError))


def test_rollup_sums_along_the_tree_and_keeps_unknown_stations_under_unassigned() -> None:
    tree = _tree()
    counts = {
        ("gate-a", "st-01"): {"screened": 10, "fevers": 1},
        ("gate-a", "st-02"): {"screened": 5},
        ("market", "m1"): {"screened": 7, "fevers": 2},
        ("rogue", "<b>x</b>"): {"screened": 3, "fevers": 1},
        ("gate-a", "st-09"): {"screened": 4},
    }
    body = rollup(tree, counts, [("quiet", "q1")])
    assert body["totals"] == {"screened": 29, "fevers": 4}, "every station counted once, none dropped"
    east, west, loose = body["children"]
    assert (east["path"], east["totals"]) == ("east", {"screened": 15, "fevers": 1})
    assert east["children"][0]["children"][0]["totals"] == {"screened": 15, "fevers": 1}
    assert (west["path"], west["totals"]) == ("west", {"screened": 7, "fevers": 2})
    assert loose["path"] == "unassigned" and loose["totals"] == {"screened": 7, "fevers": 1}
    assert [(s["site"], s["station"]) for s in loose["stations"]] == [("gate-a", "st-09"), ("quiet", "q1"), ("rogue", "<b>x</b>")]
    keys = list(counts) + [("quiet", "q1")]
    assert stations_under(tree, "east", keys) == [("gate-a", "st-01"), ("gate-a", "st-02")]
    assert stations_under(tree, "unassigned", keys) == [("gate-a", "st-09"), ("quiet", "q1"), ("rogue", "<b>x</b>")]
    assert len(stations_under(tree, "", keys)) == 3, "the district's own stations are the placed ones"
    assert "unassigned" not in [c["path"] for c in rollup(tree, {("market", "m1"): {"screened": 1}})["children"]]


def test_edits_keep_comments_and_every_result_is_a_valid_registry() -> None:
    text = apply_edit(TREE, {"op": "add", "parent": "west/g2", "key": "school", "name": "学校卡口"})[0]
    text, action, target = apply_edit(text, {"op": "assign", "station": "gate-a/st-02", "checkpoint": "west/g2/school"})
    assert (action, target) == ("tree.assign", "gate-a/st-02")
    text = apply_edit(text, {"op": "move", "path": "east/g1", "parent": "west"})[0]
    text = apply_edit(text, {"op": "rename", "path": "west", "name": "西城 <script>alert(1)</script>"})[0]
    text = apply_edit(text, {"op": "add", "parent": "", "key": "north", "name": "北"})[0]
    text = apply_edit(text, {"op": "remove", "path": "north"})[0]
    assert "# the east side" in text and "# both lanes of the east gate" in text and "# 测试区 — a test district" in text
    tree = _tree(text)
    assert tree.locate("gate-a", "st-01") == "west/g1/gate" and tree.locate("gate-a", "st-02") == "west/g2/school"
    assert tree.nodes()["west"].name == "西城 <script>alert(1)</script>", "a name is data; the page shows it as text"
    assert tomllib.loads(text)["towns"]["east"] == {"name": "城东街道"}
    text = apply_edit(text, {"op": "unassign", "station": "gate-a/st-01"})[0]
    assert _tree(text).locate("gate-a", "st-01") is None


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"op": "add", "parent": "east/g1/gate", "key": "x", "name": "x"}, "parent 'east/g1/gate': a checkpoint has no child nodes"),
        ({"op": "add", "parent": "east", "key": "g1", "name": "x"}, "key 'g1': east already has a child with that key"),
        ({"op": "add", "parent": "east", "key": "a/b", "name": "x"}, "key 'a/b' not allowed"),
        ({"op": "add", "parent": "", "key": "unassigned", "name": "x"}, "towns.unassigned: the key 'unassigned' is reserved"),
        ({"op": "move", "path": "east/g1", "parent": "west/g2"}, "node 'east/g1' is a grid: its parent must be a town"),
        ({"op": "remove", "path": "east"}, "node 'east' is not empty"),
        ({"op": "rename", "path": "nowhere", "name": "x"}, "node 'nowhere': no such node"),
        ({"op": "rename", "path": "east", "name": "x" * 81}, "name = "),
        ({"op": "assign", "station": "gate-a/st-01", "checkpoint": "east"}, "node 'east' is a town: stations are assigned to checkpoints"),
        ({"op": "assign", "station": "<b>", "checkpoint": "east/g1/gate"}, "station '<b>': expected"),
        ({"op": "drop-table"}, "op = 'drop-table': expected one of add, rename, move, remove, assign, unassign"),
        ({"op": "move", "path": "a/b/c/d/e", "parent": "x"}, "node 'a/b/c/d': no such node"),
    ],
)
def test_a_bad_edit_is_refused_with_what_is_wrong(edit: dict[str, str], problem: str) -> None:
    with pytest.raises(TreeError) as info:
        apply_edit(TREE, edit)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
