from __future__ import annotations

from django.contrib.auth.views import LoginView
from django.urls import path
from django.views.generic import TemplateView

from django_site import views

urlpatterns = [
    path("", TemplateView.as_view(template_name="signup.html"), name="signup"),
    path("account/", TemplateView.as_view(template_name="account.html"), name="account"),
    path("login/", LoginView.as_view(), name="login"),
    path("signed-up/", views.signed_up, name="signed-up"),
]
