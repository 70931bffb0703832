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
