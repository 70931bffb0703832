"""``klaviyo-middleware spool ...``: an operator's commands on a spool file."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any, TextIO

from klaviyo_middleware.cli.output import fail, person, requeued
from klaviyo_middleware.delivery.dead_letters import DeadLetter
from klaviyo_middleware.delivery.spool.admin import SpoolAdmin
from klaviyo_middleware.redact import redact


def run(args: argparse.Namespace, admin: SpoolAdmin, out: TextIO) -> int:
    if args.action == "stats":
        stats = admin.stats()
        if args.json:
            print(json.dumps(stats), file=out)
        else:
            for name, value in stats.items():
                print(f"{name:>20}: {value}", file=out)
        return 0
    if args.action == "dead":
        letters = [describe(letter, args.show_personal_data) for letter in admin.dead_letters()]
        if args.json:
            print(json.dumps(letters), file=out)
        else:
            for letter in letters:
                print(
                    f"{letter['id']}  dead {letter['dead_at']}  attempts {letter['attempts']}  "
                    f"{letter['action']} for {letter['email']}  done: {letter['done'] or '-'}\n"
                    f"    {letter['error']}",
                    file=out,
                )
            print(f"{len(letters)} dead letter(s)", file=out)
        return 0
    if args.action == "retry":
        count = admin.retry(args.ids, relist=args.relist)
        print(requeued(count, args.relist), file=out)
        if args.ids and not args.relist and count < len(set(args.ids)):
            # Named ones that are not dead letters (already retried, purged, a typo).
            return fail(f"{len(set(args.ids)) - count} of the --id values named no "
                         "dead letter (see `spool dead`)", code=1)
        return 0
    if args.action == "resume":
        lifted = admin.resume()
        print(f"lifted a pause of {lifted:.0f} s" if lifted else "delivery was not paused",
              file=out)
        return 0
    if args.action == "forget":
        try:
            who = person(args.person)
        except ValueError as exc:
            return fail(str(exc))
        removed = admin.forget(**who)
        print(f"erased {removed['queued']} queued submission(s) and {removed['dead']} dead "
              f"letter(s) about {redact(args.person)} from {admin.spool.path}", file=out)
        return 0
    if args.ids is None and args.older_than is None and not args.all:
        return fail("purge needs --id, --older-than or --all")
    print(f"purged {admin.purge(args.ids, args.older_than)} dead letter(s)", file=out)
    return 0


def describe(letter: DeadLetter, personal: bool) -> dict[str, Any]:
    error = letter.error
    text = " ".join(
        str(part)
        for part in (error.get("message"), error.get("detail"), error.get("pointer"))
        if part
    )
    shown = text if personal else redact(text)
    email = letter.email
    return {
        "id": letter.id,
        "dead_at": datetime.fromtimestamp(letter.dead_at, timezone.utc).isoformat(
            timespec="seconds"
        ),
        "attempts": letter.attempts,
        "action": letter.submission.action if letter.submission else "unreadable",
        "email": email if personal else redact(email),
        "done": ", ".join(letter.progress.done),
        "status": error.get("status"),
        "code": error.get("code"),
        "error": shown,
    }
