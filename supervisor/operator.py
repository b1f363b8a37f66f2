"""Answering capsules: approvals and elicitations, for ``astrid approvals/approve/deny/elicit``.

Pending requests are listed and answered through the broker (JSON-RPC on
``sessions/system.sock``); the broker publishes the answer on the request's response topic, where
the waiting capsule receives it.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

from astrid_core.dirs import AstridHome
from astrid_core.rpc import Method
from supervisor.client import SystemClient

REQUEST_TIMEOUT: Final = 10.0
#: Where capsules' questions are published (``elicit_request``).
ELICIT_TOPIC: Final = "astrid.v1.elicit"
#: How long ``astrid elicit`` (without ``--follow``) waits for the next question of a hook after
#: answering one.
FOLLOW_UP_S: Final = 2.0

#: ``--session`` / ``--always`` of ``astrid approve`` → the approval_response decision.
APPROVE_DECISIONS: Final = {
    "once": "approve",
    "session": "approve_session",
    "always": "approve_always",
}


def list_approvals(home: AstridHome) -> list[dict[str, Any]]:
    with SystemClient.connect(home, timeout=REQUEST_TIMEOUT) as client:
        result = client.request(Method.APPROVALS_LIST, {}, timeout=REQUEST_TIMEOUT)
    approvals: list[dict[str, Any]] = result.get("approvals", [])
    return approvals


def answer_approval(
    home: AstridHome, request_id: str, decision: str, reason: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"request_id": request_id, "decision": decision}
    if reason:
        params["reason"] = reason
    with SystemClient.connect(home, timeout=REQUEST_TIMEOUT) as client:
        result: dict[str, Any] = client.request(
            Method.APPROVALS_ANSWER, params, timeout=REQUEST_TIMEOUT
        )
    return result


def render_approvals(approvals: list[dict[str, Any]], now: float | None = None) -> str:
    """A plain table: ID, CAPSULE, RISK, AGE, ACTION, RESOURCE."""
    now = time.time() if now is None else now
    header = ("ID", "CAPSULE", "RISK", "AGE", "ACTION", "RESOURCE")
    rows = [
        (
            str(a.get("request_id", "")),
            str(a.get("capsule", "")),
            str(a.get("risk_level", "")),
            f"{max(0, int(now - float(a.get('created_at', now))))}s",
            str(a.get("action", "")),
            str(a.get("resource", "")),
        )
        for a in approvals
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Elicitation


def list_elicitations(client: SystemClient) -> list[dict[str, Any]]:
    result = client.request(Method.ELICITATIONS_LIST, {}, timeout=REQUEST_TIMEOUT)
    pending: list[dict[str, Any]] = result.get("elicitations", [])
    return pending


def prompt_field(
    capsule: str,
    field: dict[str, Any],
    read_line: Callable[[str], str],
    read_secret: Callable[[str], str],
    out: TextIO,
) -> dict[str, Any]:
    """Ask the operator for one field; returns ``{"value"}``, ``{"values"}`` or ``{}`` (cancel).

    An empty answer takes the default when there is one; end of input cancels.
    """
    key = str(field.get("key", ""))
    prompt = str(field.get("prompt") or key)
    default = field.get("default")
    field_type = field.get("field_type")
    out.write(f"capsule {capsule} asks for {key}")
    description = field.get("description")
    if description and description != prompt:
        out.write(f" ({description})")
    out.write("\n")
    try:
        if field_type == "Secret":
            return {"value": read_secret(f"{prompt} (hidden): ")}
        if field_type == "Array":
            values: list[str] = []
            out.write(f"{prompt}: one item per line, an empty line to finish\n")
            while item := read_line(f"  item {len(values) + 1}: "):
                values.append(item)
            return {"values": values}
        if isinstance(field_type, dict) and "Enum" in field_type:
            options = [str(option) for option in field_type["Enum"]]
            for number, option in enumerate(options, start=1):
                out.write(f"  {number}) {option}\n")
            while True:
                hint = f" [{default}]" if default else ""
                answer = read_line(f"{prompt}{hint}: ").strip()
                if not answer and default:
                    return {"value": str(default)}
                if answer.isdigit() and 1 <= int(answer) <= len(options):
                    return {"value": options[int(answer) - 1]}
                if answer in options:
                    return {"value": answer}
                out.write(f"  choose 1 to {len(options)} or type an option\n")
        hint = f" [{default}]" if default else ""
        answer = read_line(f"{prompt}{hint}: ")
        return {"value": answer if answer or not default else str(default)}
    except EOFError:
        out.write("\n")
        return {}


def _reader(stream: TextIO, out: TextIO) -> Callable[[str], str]:
    def read_line(prompt: str) -> str:
        if stream.isatty():
            return input(prompt)
        out.write(prompt)
        out.flush()
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read_line


def _secret_reader(stream: TextIO, out: TextIO) -> Callable[[str], str]:
    fallback = _reader(stream, out)

    def read_secret(prompt: str) -> str:
        if stream.isatty():
            return getpass.getpass(prompt)
        return fallback(prompt)  # piped input: nothing to hide on a terminal

    return read_secret


def answer_elicitations(
    home: AstridHome,
    *,
    follow: bool,
    timeout: float | None,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
) -> int:
    """Prompt for every pending elicitation and the questions that follow it (a hook asks one
    at a time: the next arrives only once the previous is answered, so after an answer this
    waits up to ``FOLLOW_UP_S`` for another). With ``follow``, keep prompting for new ones until
    ``timeout``. Returns how many were answered."""
    read_line, read_secret = _reader(stdin, out), _secret_reader(stdin, out)
    answered = 0
    seen: set[str] = set()
    deadline = None if timeout is None else time.monotonic() + timeout
    last_answer: float | None = None
    with SystemClient.connect(home, timeout=REQUEST_TIMEOUT) as client:
        # Subscribe before listing, so that no question published meanwhile goes unnoticed.
        client.request(Method.BUS_SUBSCRIBE, {"pattern": ELICIT_TOPIC}, timeout=REQUEST_TIMEOUT)
        while True:
            for pending in list_elicitations(client):
                request_id = str(pending.get("request_id"))
                if request_id in seen:
                    continue
                seen.add(request_id)
                response = prompt_field(
                    str(pending.get("capsule", "?")),
                    pending.get("field", {}),
                    read_line,
                    read_secret,
                    out,
                )
                client.request(
                    Method.ELICITATIONS_ANSWER,
                    {"request_id": request_id, **response},
                    timeout=REQUEST_TIMEOUT,
                )
                answered += 1
                last_answer = time.monotonic()
            if follow:
                wait = None if deadline is None else deadline - time.monotonic()
            elif last_answer is not None:
                wait = last_answer + FOLLOW_UP_S - time.monotonic()
            else:
                return answered
            if wait is not None and wait <= 0:
                return answered
            if client.next_notification(wait) is None:
                return answered
