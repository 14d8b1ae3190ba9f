"""The ordering guard, without a database: which write may replace which."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from mirror.events import RecordWrite, Resource, record_write
from mirror.guard import RecordState, merge
from mirror.states import Effect
from mirror.versions import Action
from tests.factories import TIMESTAMPS


def write(action: Action, timestamp: str, **fields: object) -> RecordWrite:
    return record_write(Resource.PATIENT, action, timestamp, {"patient_id": "P1", **fields})


def fold(writes: list[RecordWrite]) -> tuple[RecordState, list[str]]:
    state, effects = RecordState(), []
    for item in writes:
        state, effect = merge(state, item.action, item.version, item.fields)
        effects.append(effect)
    return state, effects


def test_newer_update_replaces_older() -> None:
    state, effects = fold(
        [
            write(Action.CREATE, "2024-01-01T00:00:00Z", phone="1"),
            write(Action.UPDATE, "2024-01-02T00:00:00Z", phone="2"),
        ]
    )
    assert effects == [Effect.CREATED, Effect.UPDATED]
    assert state.fields is not None
    assert state.fields["phone"] == "2"


def test_older_update_never_overwrites_newer() -> None:
    state, effects = fold(
        [
            write(Action.UPDATE, "2024-01-02T00:00:00Z", phone="2"),
            write(Action.UPDATE, "2024-01-01T00:00:00Z", phone="1"),
        ]
    )
    assert effects == [Effect.CREATED, Effect.STALE]
    assert state.fields is not None
    assert state.fields["phone"] == "2"


def test_delete_is_not_undone_by_an_older_update() -> None:
    state, effects = fold(
        [
            write(Action.DELETE, "2024-01-02T00:00:00Z"),
            write(Action.UPDATE, "2024-01-01T00:00:00Z", phone="1"),
        ]
    )
    assert effects == [Effect.DELETED, Effect.STALE]
    assert state.deleted


def test_newer_update_after_delete_restores() -> None:
    state, effects = fold(
        [
            write(Action.CREATE, "2024-01-01T00:00:00Z"),
            write(Action.DELETE, "2024-01-02T00:00:00Z"),
            write(Action.UPDATE, "2024-01-03T00:00:00Z", phone="3"),
        ]
    )
    assert effects == [Effect.CREATED, Effect.DELETED, Effect.RESTORED]
    assert not state.deleted


def test_two_events_in_the_same_second_are_both_applied() -> None:
    # The peers' bug: a strict < on whole seconds drops the second of these.
    state, effects = fold(
        [
            write(Action.UPDATE, "2024-01-01T00:00:00.100Z", phone="1"),
            write(Action.UPDATE, "2024-01-01T00:00:00.200Z", phone="2"),
        ]
    )
    assert effects == [Effect.CREATED, Effect.UPDATED]
    assert state.fields is not None
    assert state.fields["phone"] == "2"


def test_at_equal_instants_delete_beats_update_beats_create() -> None:
    moment = "2024-01-01T10:00:00Z"
    same_moment = "2024-01-01T15:30:00+05:30"
    create = write(Action.CREATE, moment, phone="c")
    update = write(Action.UPDATE, same_moment, phone="u")
    delete = write(Action.DELETE, moment)
    for order in itertools.permutations([create, update, delete]):
        state, _ = fold(list(order))
        assert state.deleted
        assert state.fields is not None
        assert state.fields["phone"] == "u"
    for order in itertools.permutations([create, update]):
        state, _ = fold(list(order))
        assert not state.deleted
        assert state.fields is not None
        assert state.fields["phone"] == "u"


def test_equal_instant_updates_pick_the_same_winner_in_any_order() -> None:
    a = write(Action.UPDATE, "2024-01-01T00:00:00Z", phone="a")
    b = write(Action.UPDATE, "2024-01-01T00:00:00Z", phone="b")
    assert fold([a, b])[0] == fold([b, a])[0]


_TIMES = TIMESTAMPS
writes_strategy = st.lists(
    st.builds(
        write,
        st.sampled_from(list(Action)),
        st.sampled_from(_TIMES),
        phone=st.sampled_from(["1", "2", "3"]),
    ),
    max_size=8,
)


@given(writes_strategy, st.randoms(), st.lists(st.integers(0, 7), max_size=6))
def test_any_order_and_duplication_gives_the_same_state(
    writes: list[RecordWrite], random: object, repeats: list[int]
) -> None:
    expected, _ = fold(writes)
    shuffled = writes + [writes[i] for i in repeats if i < len(writes)]
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    assert fold(shuffled)[0] == expected
