"""Resilience around external services: circuit breakers, rate limits and side effects
done once, all with their state in Redis so every replica sees the same picture."""

from .breaker import BreakerPolicy, CircuitBreaker
from .once import SideEffects
from .ratelimit import RateLimiter

__all__ = ["BreakerPolicy", "CircuitBreaker", "RateLimiter", "SideEffects"]
