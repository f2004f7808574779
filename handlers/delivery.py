"""Direct delivery handlers: ``send_email`` (and the seed's ``email``), ``send_sms`` and
``webhook``. Each send is done once per task and passes the channel's rate limit and circuit
breaker (``ctx.services.deliver``)."""

from __future__ import annotations

import msgspec

from contracts import SendEmail, SendSms, Webhook
from streamworker import TaskContext, handler
from streamworker.channels.email import OutgoingEmail

_json = msgspec.json.Encoder()


@handler("send_email", contract=SendEmail, timeout_seconds=60)
async def send_email(payload: SendEmail, ctx: TaskContext) -> bool:
    services = ctx.services
    mail = OutgoingEmail(
        to=payload.to,
        subject=payload.subject,
        body=payload.body,
        reference=f"{ctx.task_id}.email",
    )
    channel = services.email  # not configured: refused before anything is claimed
    return await services.deliver("email", lambda: channel.send(mail), task_id=ctx.task_id)


handler("email", contract=SendEmail, timeout_seconds=60)(send_email)


@handler("send_sms", contract=SendSms, timeout_seconds=30)
async def send_sms(payload: SendSms, ctx: TaskContext) -> bool:
    services = ctx.services
    sms = services.sms
    return await services.deliver(
        "sms",
        lambda: sms.send(to=payload.to, message=payload.message, reference=f"{ctx.task_id}.sms"),
        task_id=ctx.task_id,
    )


@handler("webhook", contract=Webhook, timeout_seconds=30)
async def webhook(payload: Webhook, ctx: TaskContext) -> bool:
    services = ctx.services
    target = await services.webhooks.target(payload.url)  # SSRF guard before anything else
    body = _json.encode(payload.payload)
    return await services.deliver(
        "webhook",
        lambda: services.webhooks.deliver(target, body, ctx.task_id, payload.method),
        task_id=ctx.task_id,
        breaker=services.host_breaker(target.host),
    )
