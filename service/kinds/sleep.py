"""The ``sleep`` kind: waits, reports progress in steps, optionally fails. For tests,
benchmarks and demos; admins only unless SLEEP_KIND_FOR_EVERYONE is set."""
from __future__ import annotations

import time

from service.engine.kind import JobCancelled, JobFailed, JobKind, TransientJobError
from service.errors import ValidationError

MAX_DURATION = 3600.0
FAIL_MODES = {"permanent", "transient", "crash"}
PARAMS = {"duration", "steps", "fail", "succeed_on_attempt", "write_file", "log_steps", "uninterruptible"}


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(f"{field} must be a number.", details={"field": field})
    return float(value)


def _integer(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be a whole number.", details={"field": field})
    return int(value)


class SleepKind(JobKind):
    name = "sleep"
    description = "Wait for `duration` seconds in `steps` progress steps; optionally fail."
    admin_only = True
    max_attempts = 3
    retry_backoff_seconds = 0.2
    default_duration_seconds = 1.0

    def validate(self, params, config):
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise ValidationError(f"Unknown parameter {unknown[0]!r}.", details={"field": unknown[0]})
        duration = _number(params.get("duration", 1.0), "duration")
        steps = _integer(params.get("steps", 10), "steps")
        if not 0 <= duration <= MAX_DURATION:
            raise ValidationError(f"duration must be between 0 and {MAX_DURATION:.0f} seconds.",
                                  details={"field": "duration"})
        if not 1 <= steps <= 1000:
            raise ValidationError("steps must be between 1 and 1000.", details={"field": "steps"})
        fail = params.get("fail")
        if fail is True:
            fail = "permanent"
        if fail is False:
            fail = None
        if not (fail is None or (isinstance(fail, str) and fail in FAIL_MODES)):
            raise ValidationError("fail must be one of permanent, transient, crash.", details={"field": "fail"})
        out = {"duration": duration, "steps": steps}
        if fail:
            out["fail"] = fail
            # transient failures succeed on this attempt number (None: never)
            succeed_on = params.get("succeed_on_attempt")
            if succeed_on is not None:
                out["succeed_on_attempt"] = _integer(succeed_on, "succeed_on_attempt")
        # log_steps: a line per step in the job's log; uninterruptible: each step blocks without
        # looking at cancel or stop requests, like a long library call (a model load, a big parse)
        for flag in ("write_file", "log_steps", "uninterruptible"):
            value = params.get(flag, False)
            if not isinstance(value, bool):
                raise ValidationError(f"{flag} must be true or false.", details={"field": flag})
            if value:
                out[flag] = True
        return out

    def run(self, ctx):
        began_at = time.time()  # when the executor really began (started_at is the claim's time)
        duration, steps = ctx.params["duration"], ctx.params["steps"]
        if ctx.params.get("write_file"):
            with ctx.open_output("sleep.txt", "w") as f:
                f.write(f"job {ctx.job_id} attempt {ctx.attempt}\n")
        for step in range(1, steps + 1):
            if ctx.params.get("uninterruptible"):
                time.sleep(duration / steps)
            elif duration and ctx.wait(duration / steps):
                raise JobCancelled(ctx.stop_reason)
            ctx.check_cancelled()
            ctx.progress(100.0 * step / steps, f"step {step}/{steps}")
            if ctx.params.get("log_steps"):
                ctx.log.info("step %d of %d done", step, steps)
        fail = ctx.params.get("fail")
        succeed_on = ctx.params.get("succeed_on_attempt")
        if fail and not (succeed_on and ctx.attempt >= succeed_on):
            if fail == "transient":
                raise TransientJobError("SLEEP_TRANSIENT", f"transient failure on attempt {ctx.attempt}")
            if fail == "crash":
                raise RuntimeError("deliberate crash")
            raise JobFailed("SLEEP_FAILED", "failed as asked")
        return {"slept": duration, "steps": steps, "attempt": ctx.attempt, "began_at": round(began_at, 6)}
