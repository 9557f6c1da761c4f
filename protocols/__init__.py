"""The contracts of vpp: MQTT topics, message schemas, units and sign convention,
partitioning, clocks and device register maps. Imports nothing of edge, cloud or the
simulator; everything else imports it."""
