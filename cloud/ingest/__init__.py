"""Ingest: partition workers that turn site telemetry into partition aggregates in Redis.

* :mod:`cloud.ingest.partition_state` - one partition's sites as numpy arrays (pure, no I/O).
* :mod:`cloud.ingest.leases` - which worker owns which partition (Redis leases).
* :mod:`cloud.ingest.mqtt_link` - a paho subscriber driven by the asyncio loop.
* :mod:`cloud.ingest.worker` - the partition worker process.
"""
