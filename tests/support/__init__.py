"""What the tests share: factories, the recorded fake Klaviyo, the OpenAPI
contract, waiting, services, backlogs, the in-memory lease store and the
personal-data watch.

Scripts a test starts as a process of its own (``spool_process.py``,
``celery_observed.py``, ``metrics_site.py``, ``paste_inner_app.py``, the
Django site) stay beside the tests: they are found by file or module name.
"""
