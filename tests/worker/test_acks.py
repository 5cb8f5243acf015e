"""In-order acknowledgements: each after its message is handled, none from an earlier
connection."""

from __future__ import annotations

import random

from sensorium.worker.acks import AckQueue


def queue() -> tuple[AckQueue, list[tuple[int, int, int]]]:
    sent: list[tuple[int, int, int]] = []
    return AckQueue(lambda mid, qos, gen: sent.append((mid, qos, gen))), sent


def test_acks_go_out_in_arrival_order_once_each_message_is_done() -> None:
    acks, sent = queue()
    first, second, third = (acks.track(mid, 1, generation=1) for mid in (7, 8, 9))
    acks.complete(third)
    acks.complete(second)
    assert sent == []
    oldest = acks.oldest()
    assert oldest is not None
    assert oldest.ticket == first
    acks.complete(first)
    assert sent == [(7, 1, 1), (8, 1, 1), (9, 1, 1)]
    assert len(acks) == 0
    assert acks.oldest() is None


def test_qos0_messages_need_no_ack_and_hold_nothing_back() -> None:
    acks, sent = queue()
    fire_and_forget = acks.track(1, 0, generation=1)
    confirmed = acks.track(2, 1, generation=1)
    acks.complete(confirmed)
    acks.complete(fire_and_forget)
    assert sent == [(2, 1, 1)]


def test_messages_of_an_earlier_connection_are_never_acknowledged() -> None:
    acks, sent = queue()
    old = acks.track(5, 1, generation=1)
    acks.new_connection(2)
    # One more of the old connection, still waiting in the event loop's queue when the
    # new connection came up: its id means nothing (or another message) now.
    late = acks.track(6, 1, generation=1)
    new = acks.track(5, 1, generation=2)
    acks.complete(old)
    acks.complete(late)
    assert sent == []
    acks.complete(new)
    assert sent == [(5, 1, 2)]


def test_the_first_message_of_a_new_connection_voids_what_the_old_one_left() -> None:
    acks, sent = queue()
    stuck = acks.track(1, 1, generation=1)
    fresh = acks.track(1, 1, generation=2)
    assert acks.generation == 2
    acks.complete(fresh)
    acks.complete(stuck)
    assert sent == [(1, 1, 2)]


def test_any_completion_order_acks_each_message_once_in_arrival_order() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        acks, sent = queue()
        qos_of = {mid: rng.choice((0, 1, 1, 1)) for mid in range(1, 120)}
        tickets = {acks.track(mid, qos, generation=1): mid for mid, qos in qos_of.items()}
        # Each completed twice (a retried write's late outcome), in a random order.
        order = list(tickets) * 2
        rng.shuffle(order)
        completed: set[int] = set()
        for ticket in order:
            acks.complete(ticket)
            completed.add(tickets[ticket])
            # What went out: the QoS 1 messages up to the first one not done (QoS 0 ones
            # hold nothing back).
            expected = []
            for mid, qos in qos_of.items():
                if not qos:
                    continue
                if mid not in completed:
                    break
                expected.append((mid, 1, 1))
            assert sent == expected, seed
        assert len(acks) == 0
        assert acks.oldest() is None


def test_the_oldest_waiting_message_is_named_with_its_topic() -> None:
    acks, _sent = queue()
    first = acks.track(1, 1, generation=1, topic="devices/a/telemetry")
    second = acks.track(2, 1, generation=1, topic="devices/b/telemetry")
    acks.complete(second)
    oldest = acks.oldest()
    assert oldest is not None
    assert (oldest.ticket, oldest.topic) == (first, "devices/a/telemetry")
