"""How many of a partition's messages a persistent session gets after an outage, per queue limit.

A cloud session (``clean_start=False``, session expiry 1 h) subscribes to a partition's
telemetry at QoS 1 and goes away; ``--sites`` sites each publish ``--messages`` QoS 1
messages (what they buffered during the outage, drained at reconnect); the session comes
back and counts what it is given. Run once per ``max_queued_messages`` value::

    python bench/bench_broker_queue.py --sites 500 --messages 20 --limits 1000 200000

Mosquitto drops, without telling anyone, every message beyond the limit (the publishers all
got their PUBACK): the count received is the whole answer.
"""

from __future__ import annotations

import argparse
import threading
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols.mqtt_endpoint import MqttEndpoint, threaded_client
from protocols.topics import partition_filter, site_topic
from vpp.services import MosquittoServer

PARTITION = 0
QUIET_S = 2.0


def _session(endpoint: MqttEndpoint, received: list[float]) -> object:
    client = threaded_client(endpoint, "bench-cloud-session")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.on_message = lambda c, u, m: received.append(time.monotonic())
    client.connect(endpoint.host, endpoint.port, clean_start=False, properties=props)
    return client


def run_once(limit: int, sites: int, messages: int) -> tuple[int, float]:
    """Messages the returning session received, and how long they took to arrive."""
    with MosquittoServer(max_queued_messages=limit) as broker:
        endpoint = broker.endpoint()
        received: list[float] = []
        subscribed = threading.Event()
        cloud = _session(endpoint, received)
        cloud.on_subscribe = lambda *a: subscribed.set()
        cloud.loop_start()
        cloud.subscribe(partition_filter(PARTITION, "telemetry"), qos=1)
        assert subscribed.wait(5)
        cloud.disconnect()
        cloud.loop_stop()

        publisher = threaded_client(endpoint, "bench-sites")
        publisher.max_inflight_messages_set(1000)
        publisher.connect(endpoint.host, endpoint.port)
        publisher.loop_start()
        topics = [site_topic(PARTITION, f"site-{s}", "telemetry") for s in range(sites)]
        batch = []
        for _ in range(messages):
            for topic in topics:
                batch.append(publisher.publish(topic, b"x" * 300, qos=1))
                if len(batch) == 500:  # paho's own queue is bounded: wait for the PUBACKs
                    for info in batch:
                        info.wait_for_publish(30)
                    batch.clear()
        for info in batch:
            info.wait_for_publish(30)
        publisher.disconnect()
        publisher.loop_stop()

        start = time.monotonic()
        cloud = _session(endpoint, received)
        cloud.loop_start()
        last = -1
        while len(received) != last:
            last = len(received)
            time.sleep(QUIET_S)
        cloud.disconnect()
        cloud.loop_stop()
        return len(received), (received[-1] - start) if received else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=500)
    parser.add_argument("--messages", type=int, default=20, help="per site")
    parser.add_argument("--limits", type=int, nargs="+", default=[1000, 200_000])
    args = parser.parse_args()
    sent = args.sites * args.messages
    for limit in args.limits:
        got, took = run_once(limit, args.sites, args.messages)
        print(
            f"max_queued_messages={limit}: sent {sent}, received {got} "
            f"({100 * got / sent:.1f} %, lost {sent - got}), the last {took:.1f} s after reconnect"
        )


if __name__ == "__main__":
    main()
