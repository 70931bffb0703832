"""Hooks (docs/forms.md, "Mappings and hooks"): change or cancel a submission, observe its delivery.

``before_send(submission, request)`` runs after validation and before the
submission is queued. It may edit ``submission.profile`` (Klaviyo profile
attributes), ``submission.event.properties``, ``submission.lists`` … and
cancels the send by returning ``False`` or raising :class:`CancelSubmission`;
any other exception is logged and the submission is sent as it stands.
A cancelled submission still gets the normal success answer: the visitor did
nothing wrong, the site chose not to send.

``on_delivered(submission)``, ``on_retry(submission, error, delay)`` and
``on_dead(submission, error)`` observe delivery. They run on whichever thread
delivers, and an exception in one is logged, never propagated: an observer
must not be able to lose a submission.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from webob import Request

from klaviyo_middleware import metrics
from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

BeforeSend = Callable[[Submission, Request], Any]
OnDelivered = Callable[[Submission], Any]
OnRetry = Callable[[Submission, DeliveryError, float], Any]
OnDead = Callable[[Submission, DeliveryError], Any]


class CancelSubmission(Exception):
    """Raise from a ``before_send`` hook to drop the submission quietly."""


def _as_list(value: Callable[..., Any] | Iterable[Callable[..., Any]] | None) -> list[Any]:
    if value is None:
        return []
    if callable(value):
        return [value]
    hooks = list(value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hook {hook!r} is not callable")
    return hooks


class Hooks:
    def __init__(
        self,
        before_send: BeforeSend | Iterable[BeforeSend] | None = None,
        on_delivered: OnDelivered | Iterable[OnDelivered] | None = None,
        on_retry: OnRetry | Iterable[OnRetry] | None = None,
        on_dead: OnDead | Iterable[OnDead] | None = None,
    ) -> None:
        self.before_send_hooks: list[BeforeSend] = _as_list(before_send)
        self.delivered_hooks: list[OnDelivered] = _as_list(on_delivered)
        self.retry_hooks: list[OnRetry] = _as_list(on_retry)
        self.dead_hooks: list[OnDead] = _as_list(on_dead)

    def run_before_send(self, submission: Submission, request: Request) -> bool:
        """Run the ``before_send`` hooks; ``False`` means the send is cancelled."""
        for hook in self.before_send_hooks:
            try:
                if hook(submission, request) is False:
                    return False
            except CancelSubmission:
                return False
            except Exception:
                # A buggy hook must not lose the submission: send it as it is.
                log.exception("klaviyo_middleware: before_send hook %r failed", hook)
        return True

    # Every backend reports its outcomes here, so the metrics are counted here too.
    def delivered(self, submission: Submission) -> None:
        # The trail a new user looks for: the same id as the "accepted" line.
        log.info("klaviyo_middleware: delivered %s (%s) to Klaviyo", submission.id,
                 submission.action)
        metrics.delivered()
        self._observe(self.delivered_hooks, submission)

    def retrying(self, submission: Submission, error: DeliveryError, delay: float) -> None:
        metrics.retried()
        self._observe(self.retry_hooks, submission, error, delay)

    def dead(self, submission: Submission, error: DeliveryError) -> None:
        metrics.dead()
        self._observe(self.dead_hooks, submission, error)

    @staticmethod
    def _observe(hooks: list[Callable[..., Any]], *args: Any) -> None:
        for hook in hooks:
            try:
                hook(*args)
            except Exception:
                log.exception("klaviyo_middleware: delivery observer %r failed", hook)
