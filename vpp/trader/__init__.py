"""The virtual trader: market prices, the schedule optimiser, settlement and an API client.

Why it lives apart from ``cloud/``: a trader must see only what any trader sees - the HTTP
API - so the client imports nothing of the cloud. The pure parts (:mod:`.prices`,
:mod:`.optimise`, :mod:`.settlement`) do no I/O beyond reading price files, so the demo, the
report and the tests can use them on their own.
"""
