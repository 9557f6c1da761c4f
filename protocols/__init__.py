"""The contracts of vpp: MQTT topics, message schemas, units and sign convention,
partitioning, clocks and device register maps, plus one shared adapter both sides speak
through (``mqtt_asyncio``: paho driven by the asyncio loop). Imports nothing of edge, cloud
or the simulator; everything else imports it."""
