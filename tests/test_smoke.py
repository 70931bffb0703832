from __future__ import annotations


def test_update_profile_end_to_end(app, klaviyo):
    response = app.post(
        "/klaviyoConnect/api/updateProfile",
        {"email": "sarah@example.com", "lists[]": ["Y6nRLr"], "event[name]": "Signed up"},
        headers={"Accept": "application/json"},
    )
    assert response.status_int == 200
    assert response.json["success"] is True
    assert klaviyo.paths() == [
        "/api/profile-import",
        "/api/profile-subscription-bulk-create-jobs",
        "/api/events",
    ]


def test_importing_the_package_warns_about_nothing():
    """WebOb's cgi import is kept out of users' test runs (Python 3.11+)."""
    import subprocess
    import sys

    finished = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         "import klaviyo_middleware, webob.request; "
         "from klaviyo_middleware import KlaviyoMiddleware"],
        capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
