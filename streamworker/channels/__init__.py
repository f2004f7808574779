"""Delivery channels (SMTP, SMS gateway, Notification Service, webhooks) and the services
object the worker builds once from Settings and hands to every task (``ctx.services``)."""

from .errors import ChannelUnavailable
from .services import Services

__all__ = ["ChannelUnavailable", "Services"]
