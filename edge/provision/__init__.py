"""The installer's provisioning of a gateway: find the devices, write the config, commission,
register with the cloud.

* :mod:`~edge.provision.targets` - what to scan (hosts, CIDR ranges, ports, unit ids); pure.
* :mod:`~edge.provision.identify` - what answers at a unit id (kind, maker, model, serial).
* :mod:`~edge.provision.scan` - TCP probe then Modbus probes, bounded concurrency and timeouts.
* :mod:`~edge.provision.render` - the agent's TOML config from a scan and the installer's
  answers; pure. :mod:`~edge.provision.configure` - validate, then write it atomically.
* :mod:`~edge.provision.commission` - read every device, write a safe test value, read it back,
  restore it: :func:`~edge.provision.commission.commission_site` (also the status page's
  "re-run commissioning").
* :mod:`~edge.provision.register` - redeem a claim token with the cloud over HTTPS and store the
  site id and broker credentials (0600).

The commands are ``vpp edge provision scan | configure | commission | register``
(``vpp/commands``).
"""
