"""Cron expressions of scheduled functions (``Trigger.schedule``): what one may be, and what is
wrong with one that is not, in words, with examples. Pure parsing with croniter, no I/O."""

from __future__ import annotations

from croniter import CroniterBadDateError, CroniterError, croniter

SCHEDULE_SHORTHANDS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
SCHEDULE_EXAMPLES = "e.g. '*/5 * * * *' (every 5 minutes), '0 6 * * mon-fri' (06:00 UTC on weekdays) or @daily"
# A cron expression's fields in order (the sixth, seconds, is croniter's), with what each takes.
_CRON_FIELDS = (("minute", "0-59"), ("hour", "0-23"), ("day of the month", "1-31"), ("month", "1-12 or jan-dec"),
                ("day of the week", "0-7 or sun-sat (0 and 7 are Sunday)"), ("second", "0-59"))


def check_schedule(expression: str) -> str:
    """A cron expression the schedules can run: 5 fields (minute hour day month weekday, UTC),
    or 6 with seconds last (croniter's form), or one of :data:`SCHEDULE_SHORTHANDS`. A ValueError
    says what is wrong with it, with examples. Pure parsing, no I/O."""
    fields = expression.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        problem = None if fields[0] in SCHEDULE_SHORTHANDS else (
            f"{fields[0]} is not one of {', '.join(SCHEDULE_SHORTHANDS)}")
    elif not fields:
        problem = "it is empty"
    elif len(fields) not in (5, 6):
        problem = (f"it has {len(fields)} field{'' if len(fields) == 1 else 's'}, where a cron expression has 5 "
                   "(minute hour day-of-month month day-of-week, in UTC), or 6 with seconds last")
    else:
        problem = _cron_field_problem(fields) or _never_fires(fields)
    if problem is not None:
        raise ValueError(f"invalid schedule {expression!r}: {problem}; {SCHEDULE_EXAMPLES}")
    return expression


def _cron_field_problem(fields: list[str]) -> str | None:
    """The first field croniter refuses, read alone (the others '*'), and what that field takes."""
    for index, value in enumerate(fields):
        alone = ["*"] * len(fields)
        alone[index] = value
        try:
            croniter(" ".join(alone))
        except (CroniterError, ValueError):
            name, takes = _CRON_FIELDS[index]
            return (f"the {name} field, {value!r}, is not valid: it takes {takes}, as a single value, a range "
                    "(1-5), a list (1,15) or a step (*/10)")
    return None


def _never_fires(fields: list[str]) -> str | None:
    try:
        croniter(" ".join(fields)).get_next(float)
    except CroniterBadDateError:
        return "no date ever matches it (a day the month never has, such as the 30th of February)"
    except (CroniterError, ValueError) as exc:
        return str(exc)
    return None
