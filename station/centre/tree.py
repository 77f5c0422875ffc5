"""The district tree: district → town/street → community/grid → checkpoint, each checkpoint with its stations.

The registry is a TOML document (read with :mod:`tomllib`, edited with tomlkit so an admin's
comments and layout survive an edit from the page)::

    # 乐清市 — every checkpoint's stations
    [district]
    name = "乐清市"
    escalate_after_min = 30                # optional at any node (below)

    [towns.chengdong]                      # key: 1-64 of A-Z a-z 0-9 _ - (stable; the page's path)
    name = "城东街道"                       # what the page shows (any text but control characters)

    [towns.chengdong.grids.g01]
    name = "网格一"

    [towns.chengdong.grids.g01.checkpoints.east-gate]
    name = "东门卡口"
    stations = ["gate-a/st-01", "gate-b/*"]   # site/station, or site/* for every station of a site
    responders = [{name = "值班员", webhook = "https://ops.example/hook"}, {name = "网格长", email = "g01@example.org"}]

Any node (the district too) may list ``responders``: who is told of an alarm, an outsider vehicle or a
checkpoint offline under it (station/centre/notify.py), each a name with a webhook URL and/or an e-mail.
Any node may set ``escalate_after_min`` (minutes, more than 0 and at most 1440): how long its responders
have to acknowledge before the next level up is told; a node without it takes its nearest ancestor's,
the district without it the centre's ``--escalate-after``.

A node's path is its keys joined by ``/`` (``chengdong/g01/east-gate``; the district is ``""``).
A station listed by name wins over a ``site/*`` entry elsewhere; the same entry twice is an error.
Stations the tree does not place roll up under the reserved town ``unassigned`` — never dropped.

Pure: no I/O. :func:`parse_tree` is total over any text: a :class:`Tree` or a :class:`TreeError`
whose ``problems`` each name the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit.items import Table

KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # station.site / station.id (station/board/schema.py SEGMENT)
LEVELS = ("district", "town", "grid", "checkpoint")
CHILDREN = {"district": "towns", "town": "grids", "grid": "checkpoints"}  # the table that holds a level's children
UNASSIGNED = "unassigned"
NAME_MAX = 80
STATIONS_MAX = 500  # entries per checkpoint
NODES_MAX = 20000
RESPONDERS_MAX = 20  # per node
WEBHOOK = re.compile(r"^https?://[^\s/?#@]+(/[^\s#]*)?$")  # http(s), a host, a path; no credentials, no spaces
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$")
URL_MAX = 500
TEXT_MAX = 1_000_000
ESCALATE = "escalate_after_min"  # the key: minutes a node's responders have before the next level up is told
ESCALATE_MAX_MIN = 1440  # a day: longer is a typo, not a policy


class TreeError(ValueError):
    """A registry that cannot be used; ``problems`` lists each one (key, value, what is allowed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
        self.problems = problems


@dataclass(frozen=True)
class Responder:
    """Someone a node's notifications go to: a name, and a webhook URL and/or an e-mail address."""

    name: str
    webhook: str | None = None
    email: str | None = None


@dataclass
class Node:
    """One node of the tree; ``stations`` are a checkpoint's entries as written (``site/station`` or ``site/*``)."""

    path: str
    key: str
    level: str
    name: str
    children: list[Node] = field(default_factory=list)
    stations: tuple[str, ...] = ()
    responders: tuple[Responder, ...] = ()
    escalate_after_min: float | None = None  # as written at this node; Tree.escalate_after_s resolves inheritance


@dataclass
class Tree:
    """A parsed registry: the district node and where each station entry points."""

    root: Node
    exact: dict[tuple[str, str], str]  # (site, station) → checkpoint path
    sites: dict[str, str]  # site → checkpoint path (``site/*``)

    def locate(self, site: str, station: str) -> str | None:
        """Return the path of the checkpoint ``site/station`` belongs to, or None (unassigned)."""
        return self.exact.get((site, station)) or self.sites.get(site)

    def nodes(self) -> dict[str, Node]:
        """Return every node by path."""
        out: dict[str, Node] = {}
        todo = [self.root]
        while todo:
            node = todo.pop()
            out[node.path] = node
            todo.extend(node.children)
        return out

    def chain(self, path: str) -> list[Node]:
        """Return the node at ``path`` and its ancestors up to the district, nearest first (unknown path: the district)."""
        nodes = self.nodes()
        keys = path.split("/") if path and path in nodes else []
        return [nodes["/".join(keys[:n])] for n in range(len(keys), -1, -1)]

    def escalate_after_s(self, path: str, default: float) -> float:
        """Return the seconds the responders at ``path`` have before escalation: its own, the nearest ancestor's, else ``default``."""
        return next((n.escalate_after_min * 60 for n in self.chain(path) if n.escalate_after_min is not None), default)


def _name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if any(unicodedata.category(c)[0] == "C" for c in value):
        return None
    value = value.strip()
    return value if 0 < len(value) <= NAME_MAX else None


def station_entry(value: Any) -> tuple[str, str] | None:
    """Return ``(site, station)`` of an entry ``site/station`` or ``(site, "*")``; None if malformed."""
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    site, station = value.split("/")
    if not SEGMENT.match(site) or not (station == "*" or SEGMENT.match(station)):
        return None
    return site, station


def parse_tree(text: Any) -> Tree | TreeError:
    """Return the tree of a registry's text, or a :class:`TreeError` naming every problem; never raise."""
    try:
        if not isinstance(text, str):
            return TreeError(["registry: expected TOML text"])
        if len(text) > TEXT_MAX:
            return TreeError([f"registry: {len(text)} characters, at most {TEXT_MAX}"])
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            return TreeError([f"registry is not TOML: {exc}"])
        return _build(data)
    except RecursionError:
        return TreeError(["registry: nested too deep"])


def _build(data: dict[str, Any]) -> Tree | TreeError:
    problems: list[str] = []
    unknown = sorted(set(data) - {"district", "towns"})
    for key in unknown:
        problems.append(f"{key}: unknown top-level key (allowed: district, towns)")
    district = data.get("district", {})
    if not isinstance(district, dict):
        problems.append('district: expected a table with name = "…"')
        district = {}
    name = _name(district.get("name", "district"))
    if name is None:
        problems.append(f"district.name = {district.get('name')!r}: expected text of 1-{NAME_MAX} characters without control characters")
        name = "district"
    for key in sorted(set(district) - {"name", "responders", ESCALATE}):
        problems.append(f"district.{key}: unknown key (allowed: {ESCALATE}, name, responders)")
    root = Node("", "", "district", name, responders=_responders(district.get("responders", []), "district", problems))
    root.escalate_after_min = _escalate_after(district.get(ESCALATE), "district", problems)
    exact: dict[tuple[str, str], str] = {}
    sites: dict[str, str] = {}
    count = [0]

    def walk(parent: Node, table: Any, where: str) -> None:
        child_level = LEVELS[LEVELS.index(parent.level) + 1]
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table of {child_level}s keyed by id")
            return
        for key, body in table.items():
            here = f"{where}.{key}"
            count[0] += 1
            if count[0] > NODES_MAX:
                problems.append(f"{here}: more than {NODES_MAX} nodes")
                return
            if not KEY.match(key):
                problems.append(f"{here}: key {key!r} not allowed (1-64 of A-Z a-z 0-9 _ -)")
                continue
            if child_level == "town" and key == UNASSIGNED:
                problems.append(f"{here}: the key {UNASSIGNED!r} is reserved for stations the tree does not place")
                continue
            if not isinstance(body, dict):
                problems.append(f'{here}: expected a table (name = "…")')
                continue
            node_name = _name(body.get("name"))
            if node_name is None:
                problems.append(f"{here}.name = {body.get('name')!r}: expected text of 1-{NAME_MAX} characters without control characters")
                node_name = key
            path = f"{parent.path}/{key}" if parent.path else key
            node = Node(path, key, child_level, node_name)
            parent.children.append(node)
            allowed = {"name", "responders", ESCALATE, CHILDREN[child_level] if child_level in CHILDREN else "stations"}
            node.responders = _responders(body.get("responders", []), here, problems)
            node.escalate_after_min = _escalate_after(body.get(ESCALATE), here, problems)
            for extra in sorted(set(body) - allowed):
                problems.append(f"{here}.{extra}: unknown key (allowed for a {child_level}: {', '.join(sorted(allowed))})")
            if child_level in CHILDREN:
                walk(node, body.get(CHILDREN[child_level], {}), f"{here}.{CHILDREN[child_level]}")
            else:
                node.stations = _stations(body.get("stations", []), here, path, exact, sites, problems)

    walk(root, data.get("towns", {}), "towns")
    if problems:
        return TreeError(problems)
    return Tree(root, exact, sites)


def _escalate_after(value: Any, here: str, problems: list[str]) -> float | None:
    """Return a node's ``escalate_after_min`` (None: not set, inherited); a bad one is a problem naming key, value and range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= ESCALATE_MAX_MIN:
        problems.append(f"{here}.{ESCALATE} = {repr(value)[:80]}: expected a number of minutes, more than 0 and at most {ESCALATE_MAX_MIN}")
        return None
    return float(value)


def _responders(value: Any, here: str, problems: list[str]) -> tuple[Responder, ...]:
    """Return a node's responders; each bad one is a problem naming its key, its value and what is allowed."""
    if not isinstance(value, list):
        problems.append(
            f'{here}.responders = {str(value)[:80]!r}: expected a list of {{name = "…", webhook = "https://…"}} / {{…, email = "…"}}'
        )
        return ()
    if len(value) > RESPONDERS_MAX:
        problems.append(f"{here}.responders: {len(value)} entries, at most {RESPONDERS_MAX}")
        return ()
    out = []
    for i, entry in enumerate(value):
        where = f"{here}.responders[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} = {str(entry)[:80]!r}: expected a table with name and webhook and/or email")
            continue
        bad = False
        for extra in sorted(set(entry) - {"name", "webhook", "email"}):
            problems.append(f"{where}.{extra}: unknown key (allowed: email, name, webhook)")
            bad = True
        name = _name(entry.get("name"))
        if name is None:
            problems.append(
                f"{where}.name = {str(entry.get('name'))[:80]!r}: expected text of 1-{NAME_MAX} characters without control characters"
            )
            bad = True
        webhook, email = entry.get("webhook"), entry.get("email")
        if webhook is not None and not (isinstance(webhook, str) and len(webhook) <= URL_MAX and WEBHOOK.match(webhook)):
            problems.append(
                f"{where}.webhook = {str(webhook)[:80]!r}: expected an http(s) URL, no spaces or credentials, at most {URL_MAX} chars"
            )
            bad = True
        if email is not None and not (isinstance(email, str) and EMAIL.match(email)):
            problems.append(f"{where}.email = {str(email)[:80]!r}: expected an e-mail address (local@domain.tld)")
            bad = True
        if webhook is None and email is None:
            problems.append(f"{where}: expected webhook and/or email (where to reach {name or 'them'})")
            bad = True
        if not bad and name is not None:
            out.append(Responder(name, webhook, email))
    return tuple(out)


def _stations(
    value: Any, here: str, path: str, exact: dict[tuple[str, str], str], sites: dict[str, str], problems: list[str]
) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(f'{here}.stations = {value!r}: expected a list of "site/station" or "site/*"')
        return ()
    if len(value) > STATIONS_MAX:
        problems.append(f"{here}.stations: {len(value)} entries, at most {STATIONS_MAX}")
        return ()
    kept = []
    for i, entry in enumerate(value):
        parsed = station_entry(entry)
        if parsed is None:
            problems.append(f'{here}.stations[{i}] = {entry!r}: expected "site/station" or "site/*" (each 1-64 of A-Z a-z 0-9 _ -)')
            continue
        site, station = parsed
        table: dict[Any, str] = sites if station == "*" else exact
        key: Any = site if station == "*" else parsed
        if key in table:
            problems.append(f"{here}.stations[{i}] = {entry!r}: already placed at checkpoint {table[key]!r} (one place per entry)")
            continue
        table[key] = path
        kept.append(entry)
    return tuple(kept)


# --- roll-ups -----------------------------------------------------------------------------------


def rollup(
    tree: Tree, per_station: Mapping[tuple[str, str], Mapping[str, int]], stations: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Return the tree as nested dicts with every node's summed counts; unplaced stations under ``unassigned``.

    ``per_station`` maps ``(site, station)`` to counters (screened, pass, fevers…); ``stations`` adds
    stations known without counts (heard, nothing today) so they still appear. A node's totals are
    the sum of its stations' — nothing is counted twice, nothing dropped.
    """
    known = set(per_station) | set(stations)
    placed: dict[str, list[tuple[str, str]]] = {}
    loose: list[tuple[str, str]] = []
    for key in sorted(known):
        path = tree.locate(*key)
        if path is None:
            loose.append(key)
        else:
            placed.setdefault(path, []).append(key)

    def station_view(key: tuple[str, str]) -> dict[str, Any]:
        return {"site": key[0], "station": key[1], "totals": dict(per_station.get(key, {}))}

    def view(node: Node) -> dict[str, Any]:
        out: dict[str, Any] = {"path": node.path, "key": node.key, "level": node.level, "name": node.name}
        totals: dict[str, int] = {}
        if node.level == "checkpoint":
            out["entries"] = list(node.stations)
            out["stations"] = [station_view(k) for k in placed.get(node.path, [])]
            parts = [s["totals"] for s in out["stations"]]
        else:
            out["children"] = [view(c) for c in node.children]
            parts = [c["totals"] for c in out["children"]]
        for part in parts:
            for k, n in part.items():
                totals[k] = totals.get(k, 0) + int(n)
        out["totals"] = totals
        return out

    body = view(tree.root)
    if loose:
        totals: dict[str, int] = {}
        for key in loose:
            for k, n in per_station.get(key, {}).items():
                totals[k] = totals.get(k, 0) + int(n)
        body["children"].append(
            {
                "path": UNASSIGNED,
                "key": UNASSIGNED,
                "level": UNASSIGNED,
                "name": "未分配 · unassigned",
                "stations": [station_view(k) for k in loose],
                "totals": totals,
            }
        )
        for k, n in totals.items():
            body["totals"][k] = body["totals"].get(k, 0) + n
    return body


def stations_under(tree: Tree, path: str, stations: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the stations (of ``stations``) that roll up into the node at ``path`` (``unassigned`` too)."""
    out = []
    for key in stations:
        where = tree.locate(*key)
        if path == UNASSIGNED:
            if where is None:
                out.append(key)
        elif where is not None and (path == "" or where == path or where.startswith(path + "/")):
            out.append(key)
    return sorted(out)


# --- edits (tomlkit: comments and layout kept) -------------------------------------------------


def _table_of(doc: Any, path: str) -> Any:
    """Return the tomlkit table of the node at ``path`` (the document for the district)."""
    table: Any = doc
    level = "district"
    for key in path.split("/") if path else []:
        children = table.get(CHILDREN[level]) if level in CHILDREN else None
        if children is None or key not in children:
            raise TreeError([f"node {path!r}: no such node"])
        table = children[key]
        level = LEVELS[LEVELS.index(level) + 1]
    return table


def _level_of(path: str) -> str:
    depth = len(path.split("/")) if path else 0
    if depth >= len(LEVELS):
        raise TreeError([f"node {path[:200]!r}: no such node (a path has at most {len(LEVELS) - 1} keys)"])
    return LEVELS[depth]


def _checked(text: str) -> str:
    result = parse_tree(text)
    if isinstance(result, TreeError):
        raise result
    return text


def _new_table() -> Table:
    return tomlkit.table()


def add_node(text: str, parent: str, key: str, name: str) -> str:
    """Return the registry with a new child ``key`` (shown as ``name``) under ``parent``; raise :class:`TreeError`."""
    doc = tomlkit.parse(text)
    level = _level_of(parent)
    if level not in CHILDREN:
        raise TreeError([f"parent {parent!r}: a {level} has no child nodes (checkpoints hold stations)"])
    if not KEY.match(key):
        raise TreeError([f"key {key!r} not allowed (1-64 of A-Z a-z 0-9 _ -)"])
    table = _table_of(doc, parent)
    holder = table.get(CHILDREN[level])
    if holder is None:
        holder = tomlkit.table(is_super_table=True)
        table.add(CHILDREN[level], holder)
    if key in holder:
        raise TreeError([f"key {key!r}: {parent or 'the district'} already has a child with that key"])
    node = _new_table()
    node.add("name", name)
    if CHILDREN.get(level) == "checkpoints":
        node.add("stations", tomlkit.array())
    holder.add(key, node)
    return _checked(tomlkit.dumps(doc))


def rename_node(text: str, path: str, name: str) -> str:
    """Return the registry with the node at ``path`` shown as ``name`` (its key, so its path, is kept)."""
    doc = tomlkit.parse(text)
    table = _table_of(doc, path)
    if path == "":
        district = table.get("district")
        if district is None:
            district = tomlkit.table()
            table.add("district", district)
        table = district
    table["name"] = name
    return _checked(tomlkit.dumps(doc))


def move_node(text: str, path: str, new_parent: str) -> str:
    """Return the registry with the node at ``path`` moved under ``new_parent`` (one level up from it, same level as now)."""
    if not path:
        raise TreeError(["the district cannot be moved"])
    parent, _, key = path.rpartition("/")
    if _level_of(new_parent) != _level_of(parent):
        raise TreeError(
            [f"node {path!r} is a {_level_of(path)}: its parent must be a {_level_of(parent)}, {new_parent!r} is a {_level_of(new_parent)}"]
        )
    if new_parent == parent:
        return text
    doc = tomlkit.parse(text)
    old_holder = _table_of(doc, parent)[CHILDREN[_level_of(parent)]]
    target = _table_of(doc, new_parent)
    holder = target.get(CHILDREN[_level_of(new_parent)])
    if holder is None:
        holder = tomlkit.table(is_super_table=True)
        target.add(CHILDREN[_level_of(new_parent)], holder)
    if key in holder:
        raise TreeError([f"key {key!r}: {new_parent or 'the district'} already has a child with that key"])
    node = old_holder[key]
    old_holder.remove(key)
    holder.add(key, node)
    return _checked(tomlkit.dumps(doc))


def remove_node(text: str, path: str) -> str:
    """Return the registry without the node at ``path``; only an empty node (no children, no stations) may go."""
    if not path:
        raise TreeError(["the district cannot be removed"])
    doc = tomlkit.parse(text)
    parent, _, key = path.rpartition("/")
    node = _table_of(doc, path)
    level = _level_of(path)
    if (level in CHILDREN and len(node.get(CHILDREN[level], {}))) or len(node.get("stations", [])):
        raise TreeError([f"node {path!r} is not empty: move or remove what it holds first"])
    _table_of(doc, parent)[CHILDREN[_level_of(parent)]].remove(key)
    return _checked(tomlkit.dumps(doc))


def assign_station(text: str, entry: str, checkpoint: str | None) -> str:
    """Return the registry with ``entry`` (``site/station`` or ``site/*``) at ``checkpoint``, taken from wherever it was.

    ``checkpoint=None`` only takes it out (the station rolls up under ``unassigned``).
    """
    if station_entry(entry) is None:
        raise TreeError([f'station {entry!r}: expected "site/station" or "site/*" (each 1-64 of A-Z a-z 0-9 _ -)'])
    if checkpoint is not None and _level_of(checkpoint) != "checkpoint":
        raise TreeError([f"node {checkpoint!r} is a {_level_of(checkpoint)}: stations are assigned to checkpoints"])
    doc = tomlkit.parse(text)
    parsed = parse_tree(text)
    if isinstance(parsed, TreeError):
        raise parsed
    for node in parsed.nodes().values():
        if node.level == "checkpoint" and entry in node.stations:
            stations = _table_of(doc, node.path)["stations"]
            for i, value in enumerate(list(stations)):
                if value == entry:
                    del stations[i]
                    break
    if checkpoint is not None:
        table = _table_of(doc, checkpoint)
        if "stations" not in table:
            table.add("stations", tomlkit.array())
        table["stations"].append(entry)
    return _checked(tomlkit.dumps(doc))


EDITS = ("add", "rename", "move", "remove", "assign", "unassign")


def apply_edit(text: str, edit: Mapping[str, Any]) -> tuple[str, str, str]:
    """Apply one edit from the page (``op`` in :data:`EDITS`); return the new text, the action and its target.

    Raises :class:`TreeError` for a bad edit (the message names the field, the value and what is allowed).
    """

    def field_(name: str, *, path: bool = False) -> str:
        value = edit.get(name)
        if not isinstance(value, str) or len(value) > 400:
            raise TreeError([f"{name} = {str(value)[:80]!r}: expected text"])
        if path and value and not all(KEY.match(p) for p in value.split("/")):
            raise TreeError([f"{name} = {value[:80]!r}: expected a node path (keys joined by /)"])
        return value

    op = edit.get("op")
    if op == "add":
        name = _name(edit.get("name"))
        if name is None:
            raise TreeError([f"name = {str(edit.get('name'))[:80]!r}: expected text of 1-{NAME_MAX} characters without control characters"])
        parent, key = field_("parent", path=True), field_("key")
        return add_node(text, parent, key, name), "tree.add", f"{parent}/{key}" if parent else key
    if op == "rename":
        name = _name(edit.get("name"))
        if name is None:
            raise TreeError([f"name = {str(edit.get('name'))[:80]!r}: expected text of 1-{NAME_MAX} characters without control characters"])
        path = field_("path", path=True)
        return rename_node(text, path, name), "tree.rename", path
    if op == "move":
        path, parent = field_("path", path=True), field_("parent", path=True)
        return move_node(text, path, parent), "tree.move", path
    if op == "remove":
        path = field_("path", path=True)
        return remove_node(text, path), "tree.remove", path
    if op == "assign":
        entry, checkpoint = field_("station"), field_("checkpoint", path=True)
        return assign_station(text, entry, checkpoint), "tree.assign", entry
    if op == "unassign":
        entry = field_("station")
        return assign_station(text, entry, None), "tree.unassign", entry
    raise TreeError([f"op = {str(op)[:40]!r}: expected one of {', '.join(EDITS)}"])


EMPTY = '# The district tree (docs/centre.md): district → towns → grids → checkpoints → stations.\n[district]\nname = "district"\n'
