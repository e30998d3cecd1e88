"""Real servers for the tests and benchmarks: mosquitto, PostgreSQL, an appliance process.

Kept outside the ``appliance`` package, so that what ships does not carry code that spawns
brokers and databases (`pyproject.toml` packages only ``appliance``).
"""
