"""The dashboard through Flask's test client: the settings it is made with, signing in, CSRF tokens."""

from __future__ import annotations

import re

import config

API_KEY = "AKtest-9f8e7d6c5b4a-key"
API_SECRET = "SECRETtest-0a1b2c3d4e5f-zz"
PASSWORD = "pw-Qx7!mauve-42"


def make_cfg(password: str = PASSWORD, **changes) -> config.Config:
    return config.load_config(env={}).replace(API_KEY=API_KEY, API_SECRET=API_SECRET, DASHBOARD_PASSWORD=password,
                                              **changes)


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf(?:-token|_token)" (?:content|value)="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(client, password: str = PASSWORD):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"password": password, "csrf_token": token})
