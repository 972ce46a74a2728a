"""Rate limits kept in Redis, so every API process shares them.

Built on `limits` (the library behind Flask-Limiter) with fixed windows: per tenant a minute
and an hour limit on /api/, and two minute limits on logins, one per client address and one
per (tenant, username), so rotating addresses (or proxies' X-Forwarded-For) buys no more
guesses at one user's password. The glue is
ours because the contract fixes the order of checks (after authentication), the error shape,
and `X-RateLimit-Reset` as seconds until the minute window resets.

The tenant's limits are one round trip (`count_tenant`, a Lua script: both windows, what the
headers need, and the tenant's revocation generation that authentication checks, app.api.auth),
on the same keys the `limits` library uses, so processes of either kind share counts.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from flask import Flask, Response, current_app, g
from limits import RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from app.context import ServiceContext
from app.errors import RateLimited
from app.services.auth import generation_key, new_generation

# KEYS: the tenant's revocation generation, its minute window, its hour window.
# ARGV: the generation the caller expects ("" for none), a fresh one to store when the key is
# missing, "1" to count even when the generation differs, the two windows' lengths (s).
# Returns {generation} alone when it differs and counting was not asked for, otherwise
# {generation, minute count, minute ms left, hour count, hour ms left}. Windows as `limits`
# keeps them: a counter that expires a window after its first hit.
TENANT_SCRIPT = """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[2]
  redis.call('SET', KEYS[1], generation)
end
if generation ~= ARGV[1] and ARGV[3] ~= '1' then
  return {generation}
end
local minute = redis.call('INCRBY', KEYS[2], 1)
if minute == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
local hour = redis.call('INCRBY', KEYS[3], 1)
if hour == 1 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
return {generation, minute, redis.call('PTTL', KEYS[2]), hour, redis.call('PTTL', KEYS[3])}
"""


@dataclass(frozen=True)
class TenantCount:
    """One answer of TENANT_SCRIPT."""

    generation: str  # the tenant's revocation generation
    counted: bool  # False: the generation was not the one expected, nothing was counted
    minute: int = 0  # requests in the minute window, this one included
    minute_ms: int = 0  # until the minute window resets
    hour: int = 0
    hour_ms: int = 0


def init_app(app: Flask, ctx: ServiceContext) -> None:
    """Share the context's Redis connection pool with the limiter and add the headers."""
    settings = ctx.settings
    storage = RedisStorage(
        settings.redis_url,
        connection_pool=ctx.redis.connection_pool,
        key_prefix="emailservice:ratelimit",
    )
    app.extensions["ratelimit"] = {
        "limiter": FixedWindowRateLimiter(storage),
        "minute": RateLimitItemPerMinute(settings.rate_limit_per_minute),
        "hour": RateLimitItemPerHour(settings.rate_limit_per_hour),
        "login": RateLimitItemPerMinute(settings.login_rate_limit_per_minute),
        "storage": storage,
        "tenant_script": ctx.redis.register_script(TENANT_SCRIPT),
    }

    @app.after_request
    def add_headers(response: Response) -> Response:
        for name, value in g.get("ratelimit_headers", {}).items():
            response.headers[name] = value
        return response


def count_tenant(tenant: str, expected_generation: str | None, *, always: bool) -> TenantCount:
    """One Redis round trip: the tenant's revocation generation and, when it is
    `expected_generation` or `always`, one request counted in both windows."""
    config = current_app.extensions["ratelimit"]
    storage: RedisStorage = config["storage"]
    minute: RateLimitItemPerMinute = config["minute"]
    hour: RateLimitItemPerHour = config["hour"]
    keys = [
        generation_key(tenant),
        storage.prefixed_key(minute.key_for("tenant", tenant)),
        storage.prefixed_key(hour.key_for("tenant", tenant)),
    ]
    args = [
        expected_generation or "",
        new_generation(),
        "1" if always else "0",
        minute.get_expiry(),
        hour.get_expiry(),
    ]
    answer = config["tenant_script"](keys=keys, args=args)
    generation = answer[0].decode()
    if len(answer) == 1:
        return TenantCount(generation, counted=False)
    return TenantCount(generation, True, *(int(value) for value in answer[1:]))


def enforce_tenant(count: TenantCount) -> None:
    """The headers of a counted request; RateLimited when either window is exhausted."""
    config = current_app.extensions["ratelimit"]
    minute_limit = config["minute"].amount
    g.ratelimit_headers = {
        "X-RateLimit-Limit": str(minute_limit),
        "X-RateLimit-Remaining": str(max(minute_limit - count.minute, 0)),
        "X-RateLimit-Reset": str(max(math.ceil(count.minute_ms / 1000), 0)),
    }
    if count.minute > minute_limit:
        _refuse(count.minute_ms / 1000, "per minute")
    if count.hour > config["hour"].amount:
        _refuse(count.hour_ms / 1000, "per hour")


def limit_login(address: str) -> None:
    """Count one login attempt from `address`; RateLimited past the per-minute limit."""
    config = current_app.extensions["ratelimit"]
    limiter: FixedWindowRateLimiter = config["limiter"]
    if not limiter.hit(config["login"], "login", address):
        stats = limiter.get_window_stats(config["login"], "login", address)
        _refuse(stats.reset_time - time.time(), "of login attempts per minute")


def limit_login_user(tenant: str, username: str) -> None:
    """Count one login attempt at (`tenant`, `username`), whatever address it comes from.

    The key is a digest: usernames are the caller's text (up to 150 characters, any of them).
    The price: anyone can spend a user's attempts for the minute; that user then waits, as a
    guesser would, and nobody gets more guesses.
    """
    config = current_app.extensions["ratelimit"]
    limiter: FixedWindowRateLimiter = config["limiter"]
    who = hashlib.sha256(f"{tenant}\0{username}".encode()).hexdigest()
    if not limiter.hit(config["login"], "login-user", who):
        stats = limiter.get_window_stats(config["login"], "login-user", who)
        _refuse(stats.reset_time - time.time(), "of login attempts per minute for this user")


def _refuse(retry_after: float, window: str) -> None:
    seconds = max(math.ceil(retry_after), 1)
    raise RateLimited(f"Rate limit {window} exceeded; retry in {seconds} s.", retry_after=seconds)
