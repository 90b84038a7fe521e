"""Twilio's API as the tests play it on the loopback ``webhook_server``: its answers, how to
read the requests it got, the settings that point the channel at it."""

import base64
import json
import os
import subprocess
import sys
import urllib.parse

from afs_core.testing import Scripted

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f00dTOKENsecret5f00dTOKENsecret5"
KEY_SID = "SK" + "fedcba9876543210" * 2
KEY_SECRET = "keySECRETpart-Zz9"
SERVICE_SID = "MG" + "00112233445566778899aabbccddeeff"
SENDER = "+15005550006"
ALICE = "+447700901234"
BOB = "+15551230987"
PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
#: What must never appear in any output: the token and the basic-auth values made from it.
CREDENTIALS = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
SECRETS = (TOKEN, CREDENTIALS, KEY_SECRET)


def created(sid="SM" + "a" * 32, to=ALICE):
    """Twilio's 201 for a created message."""
    return Scripted(status=201, body=json.dumps({"sid": sid, "status": "queued", "to": to}),
                    headers={"Content-Type": "application/json"})


def refused(code, message, status=400, headers=None):
    """Twilio's error answer."""
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return Scripted(status=status, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})


def form(request):
    """The request's form fields, one value each (a repeated field fails the test)."""
    fields = urllib.parse.parse_qs(request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert all(len(values) == 1 for values in fields.values()), fields
    return {name: values[0] for name, values in fields.items()}


def basic_auth(request):
    """The basic-auth header, decoded to ``user:password``."""
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(value).decode()


def recipients(server):
    return [form(request)["To"] for request in server.received]


def settings_for(server, **extra):
    """Environment settings that point the channel at the loopback server."""
    return {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM": SENDER, "TWILIO_TO": ALICE,
            "TWILIO_API_URL": server.url, "TWILIO_TIMEOUT": "5", **extra}


def afs(*args, env, timeout=60):
    """``afs ARGS`` as a user runs it, with only this plugin loaded."""
    full = {**os.environ, "AFS_LOAD_PLUGINS": "twilio", **env}
    return subprocess.run([sys.executable, "-m", "afs_core", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


def assert_no_secret(*texts):
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
