"""Integrations with frameworks and tools, each importing its own (optional) dependency:
``contrib.django``, ``contrib.flask``, ``contrib.prometheus``."""
