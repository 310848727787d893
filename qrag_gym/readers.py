"""An exact reader for bAbI qa1-qa5: answers a question from a set of selected facts.

A retrieval environment needs to know whether the facts an agent picked are *enough* to answer,
independently of any language model. bAbI stories follow a small closed world (people move,
carry, drop and hand over objects; rooms lie north/south/east/west of each other), so replaying
the selected facts through those rules answers the question exactly, or says that it cannot.

The reader is deliberately lenient about facts that are missing from the selection, because the
gold supporting facts of bAbI are not a full trace: in qa3 the gold facts of "Where was the
football before the bathroom?" are two moves of a person and the drop, without the take. A
person who drops or passes on an object they were not seen taking is therefore taken to have
carried it through all their selected moves since the object's previous known event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_MOVE = re.compile(r"^(\w+) (?:went|moved|travelled|journeyed|went back) to the (\w+)\.?$")
_TAKE = re.compile(r"^(\w+) (?:got|took|picked up|grabbed) the (\w+)(?: there)?\.?$")
_DROP = re.compile(r"^(\w+) (?:dropped|discarded|put down|left) the (\w+)(?: there)?\.?$")
_GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.?$")
_RELATION = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.?$")

_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


@dataclass
class _World:
    """What the selected facts say, replayed in story order."""

    location: dict[str, str] = field(default_factory=dict)  # person -> room
    moves: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # person -> (fact, room)
    holder: dict[str, str | None] = field(default_factory=dict)  # object -> person (None: on floor)
    last_event: dict[str, int] = field(default_factory=dict)  # object -> fact of last take/drop/give
    trail: dict[str, list[str]] = field(default_factory=dict)  # object -> rooms it was in, in order
    transfers: list[tuple[str, str, str]] = field(default_factory=list)  # (giver, object, receiver)
    relations: list[tuple[str, str, str]] = field(default_factory=list)  # (a, direction, b)

    def place(self, obj: str, room: str | None) -> None:
        """Record that ``obj`` is now in ``room`` (unknown rooms leave no trace)."""
        if room is None:
            return
        rooms = self.trail.setdefault(obj, [])
        if not rooms or rooms[-1] != room:
            rooms.append(room)

    def ensure_carried(self, person: str, obj: str) -> None:
        """Make ``person`` the holder of ``obj``, inferring a take that was not selected.

        The object travelled with the person through every selected move after the object's
        previous known event, so those rooms join its trail.
        """
        if self.holder.get(obj) == person:
            return
        since = self.last_event.get(obj, -1)
        for index, room in self.moves.get(person, []):
            if index > since:
                self.place(obj, room)
        self.holder[obj] = person

    def apply(self, index: int, fact: str) -> None:
        """Update the world with fact number ``index``; unknown sentences are ignored."""
        if match := _MOVE.match(fact):
            person, room = match.groups()
            self.location[person] = room
            self.moves.setdefault(person, []).append((index, room))
            for obj, holder in self.holder.items():
                if holder == person:
                    self.place(obj, room)
        elif match := _TAKE.match(fact):
            person, obj = match.groups()
            self.holder[obj] = person
            self.last_event[obj] = index
            self.place(obj, self.location.get(person))
        elif match := _DROP.match(fact):
            person, obj = match.groups()
            self.ensure_carried(person, obj)
            self.holder[obj] = None
            self.last_event[obj] = index
        elif match := _GIVE.match(fact):
            giver, obj, receiver = match.groups()
            self.ensure_carried(giver, obj)
            self.holder[obj] = receiver
            self.last_event[obj] = index
            self.transfers.append((giver, obj, receiver))
        elif match := _RELATION.match(fact):
            self.relations.append(match.groups())  # type: ignore[arg-type]

    def object_room(self, obj: str) -> str | None:
        """Where ``obj`` is now: its holder's room, else the last room it was seen in."""
        holder = self.holder.get(obj)
        if holder is not None:
            return self.location.get(holder)
        rooms = self.trail.get(obj)
        return rooms[-1] if rooms else None


def _last(items: Sequence[str]) -> str | None:
    """The latest match: bAbI questions are about the most recent matching event."""
    return items[-1] if items else None


def _answer_relation(world: _World, question: str) -> str | None:
    """qa4: 'What is D of the B?' and 'What is the A D of?', using each fact and its inverse."""
    pairs = [(a, d, b) for a, d, b in world.relations]
    pairs += [(b, _OPPOSITE[d], a) for a, d, b in world.relations]
    if match := re.match(r"^What is (\w+) of the (\w+)\?$", question):
        direction, ground = match.groups()
        return _last([a for a, d, b in pairs if d == direction and b == ground])
    if match := re.match(r"^What is the (\w+) (\w+) of\?$", question):
        figure, direction = match.groups()
        return _last([b for a, d, b in pairs if d == direction and a == figure])
    return None


def _answer_transfer(world: _World, question: str) -> str | None:
    """qa5: questions about the latest matching hand-over."""
    moves = world.transfers
    if match := re.match(r"^What did (\w+) give to (\w+)\?$", question):
        giver, receiver = match.groups()
        return _last([o for g, o, r in moves if g == giver and r == receiver])
    if match := re.match(r"^Who gave the (\w+) to (\w+)\?$", question):
        obj, receiver = match.groups()
        return _last([g for g, o, r in moves if o == obj and r == receiver])
    if match := re.match(r"^Who gave the (\w+)\?$", question):
        return _last([g for g, o, _ in moves if o == match.group(1)])
    if match := re.match(r"^Who received the (\w+)\?$", question):
        return _last([r for _, o, r in moves if o == match.group(1)])
    if match := re.match(r"^Who did (\w+) give the (\w+) to\?$", question):
        giver, obj = match.groups()
        return _last([r for g, o, r in moves if g == giver and o == obj])
    return None


def _answer_location(world: _World, question: str) -> str | None:
    """qa1-qa3: where a person or object is, or where an object was before a room."""
    if match := re.match(r"^Where is the (\w+)\?$", question):
        return world.object_room(match.group(1))
    if match := re.match(r"^Where is (\w+)\?$", question):
        return world.location.get(match.group(1))
    if match := re.match(r"^Where was the (\w+) before the (\w+)\?$", question):
        obj, room = match.groups()
        rooms = world.trail.get(obj, [])
        earlier = [rooms[i - 1] for i in range(1, len(rooms)) if rooms[i] == room]
        return _last(earlier)
    return None


_ANSWERERS = {
    "qa1": _answer_location,
    "qa2": _answer_location,
    "qa3": _answer_location,
    "qa4": _answer_relation,
    "qa5": _answer_transfer,
}


def answer_babi(task: str, question: str, facts: Sequence[str]) -> str | None:
    """Answer ``question`` from ``facts`` (in story order) by the bAbI world rules.

    Returns None when the facts do not determine an answer (for example, the person's or the
    object's room never appears). ``task`` picks the question family (qa1..qa5).
    """
    if task not in _ANSWERERS:
        raise ValueError(f"unknown bAbI task {task!r}; choose one of {', '.join(_ANSWERERS)}")
    world = _World()
    for index, fact in enumerate(facts):
        world.apply(index, fact.strip())
    return _ANSWERERS[task](world, question.strip())


def answer_matches(prediction: str | None, gold: str) -> bool:
    """True when ``prediction`` names the gold answer, ignoring case, spaces and a final period."""
    if prediction is None:
        return False
    return prediction.strip().rstrip(".").lower() == gold.strip().rstrip(".").lower()
