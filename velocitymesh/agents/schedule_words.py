"""Schedules in words → a five-field cron expression and an IANA timezone.

Used by the offline planner. It knows the phrasings people actually write —
"every weekday at 9", "every monday at 8:30am", "daily at 18:00", "every hour",
"every 15 minutes", "at noon on the first of every month", "every weekend",
"in Europe/Paris", "Paris time" — and reports the schedule-like words it could not
place instead of guessing. Defaults it has to choose (a day with no time runs at
00:00) are named in ``notes`` so the explanation can say them.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass, field

__all__ = ["ScheduleWords", "describe_cron", "find_timezone", "parse_schedule"]

_DAYS = {
    "sunday": 0, "sun": 0, "monday": 1, "mon": 1, "tuesday": 2, "tue": 2, "tues": 2, "wednesday": 3, "wed": 3,
    "thursday": 4, "thu": 4, "thur": 4, "thurs": 4, "friday": 5, "fri": 5, "saturday": 6, "sat": 6,
}
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_FULL_DAY = r"(?:sunday|monday|tuesday|wednesday|thursday|friday|saturday)"
_ANY_DAY = r"(?:sunday|monday|tuesday|wednesday|thursday|friday|saturday|sun|mon|tues?|wed|thu(?:rs?)?|fri|sat)"
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "tenth": 10, "fifteenth": 15, "twentieth": 20,
}
_ABBREVIATIONS = {
    "UTC": "UTC", "GMT": "UTC", "CET": "Europe/Paris", "CEST": "Europe/Paris", "BST": "Europe/London",
    "WET": "Europe/Lisbon", "EET": "Europe/Athens", "PST": "America/Los_Angeles", "PDT": "America/Los_Angeles",
    "PT": "America/Los_Angeles", "EST": "America/New_York", "EDT": "America/New_York", "ET": "America/New_York",
    "CST": "America/Chicago", "CDT": "America/Chicago", "CT": "America/Chicago", "MST": "America/Denver",
    "MDT": "America/Denver", "MT": "America/Denver", "IST": "Asia/Kolkata", "JST": "Asia/Tokyo",
    "KST": "Asia/Seoul", "AEST": "Australia/Sydney", "AEDT": "Australia/Sydney", "NZST": "Pacific/Auckland",
}
_REGIONS = {
    "pacific": "America/Los_Angeles", "eastern": "America/New_York", "central": "America/Chicago",
    "mountain": "America/Denver", "central european": "Europe/Paris", "british": "Europe/London",
    "universal": "UTC", "utc": "UTC", "gmt": "UTC",
}
# Places people name that are not the last part of a zone name.
_PLACES = {
    "san francisco": "America/Los_Angeles", "sf": "America/Los_Angeles", "seattle": "America/Los_Angeles",
    "boston": "America/New_York", "washington": "America/New_York", "miami": "America/New_York",
    "atlanta": "America/New_York", "dallas": "America/Chicago", "houston": "America/Chicago",
    "munich": "Europe/Berlin", "frankfurt": "Europe/Berlin", "hamburg": "Europe/Berlin", "milan": "Europe/Rome",
    "barcelona": "Europe/Madrid", "geneva": "Europe/Zurich", "beijing": "Asia/Shanghai",
    "mumbai": "Asia/Kolkata", "delhi": "Asia/Kolkata", "new delhi": "Asia/Kolkata", "bangalore": "Asia/Kolkata",
    "bengaluru": "Asia/Kolkata", "india": "Asia/Kolkata", "japan": "Asia/Tokyo", "france": "Europe/Paris",
    "germany": "Europe/Berlin", "uk": "Europe/London", "montreal": "America/Toronto", "osaka": "Asia/Tokyo",
}


@dataclass
class ScheduleWords:
    """What the schedule words of a text say."""

    cron: str | None = None
    timezone: str | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)  # the characters that were understood
    notes: list[str] = field(default_factory=list)  # defaults chosen, said in the explanation
    unmapped: list[str] = field(default_factory=list)  # schedule-like words that were not understood
    unmapped_spans: list[tuple[int, int]] = field(default_factory=list)  # where those words are
    manual: bool = False  # "manually", "on demand"


@dataclass
class _Parts:
    minute: str | None = None
    hour: str | None = None
    dom: str | None = None
    month: str | None = None
    dow: str | None = None
    every_minutes: int | None = None
    every_hours: int | None = None
    every_days: int | None = None
    hourly: bool = False
    daily: bool = False
    default_hour: int | None = None  # "every morning" → 9
    found: bool = False


@functools.cache
def _zone_names() -> dict[str, str]:
    """Lower-case place name (last part of an IANA name, or the whole name) → the IANA name."""
    names: dict[str, str] = {}
    for zone in sorted(zoneinfo.available_timezones()):
        if zone.startswith(("Etc/", "SystemV/", "posix/", "right/")):
            continue
        names.setdefault(zone.lower(), zone)
        if "/" in zone and zone.split("/")[0] in (
            "Europe", "America", "Asia", "Africa", "Australia", "Pacific", "Atlantic", "Indian"
        ):
            names.setdefault(zone.rsplit("/", 1)[1].replace("_", " ").lower(), zone)
    names.update(_PLACES)
    return names


def _place(words: str) -> str | None:
    return _zone_names().get(words.strip().lower())


class _Scan:
    """The text with the parts understood so far masked, so no phrase is read twice."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.masked = text
        self.spans: list[tuple[int, int]] = []

    def find(self, pattern: str, flags: int = re.I) -> list[re.Match[str]]:
        return list(re.finditer(pattern, self.masked, flags))

    def take(self, m: re.Match[str], group: int | str = 0) -> None:
        self.take_span(*m.span(group))

    def take_span(self, s: int, e: int) -> None:
        self.spans.append((s, e))
        self.masked = self.masked[:s] + "\0" * (e - s) + self.masked[e:]


def find_timezone(scan: _Scan, anchors: list[tuple[int, int]] | None = None) -> str | None:
    """An IANA name, a region ("Pacific time"), an abbreviation (CET) or "<place> time"."""
    for m in scan.find(r"\b(?:in\s+|\()?((?:Africa|America|Antarctica|Asia|Atlantic|Australia|Europe|Indian|"
                       r"Pacific|Etc)/[A-Za-z_]+(?:/[A-Za-z_]+)?)\)?(?:\s+time)?", 0):
        zone = _place(m.group(1))
        if zone:
            scan.take(m)
            return zone
    for m in scan.find(r"\b(?:in\s+)?(pacific|eastern|central european|central|mountain|british|universal|utc|"
                       r"gmt)\s+time\b"):
        scan.take(m)
        return _REGIONS[m.group(1).lower()]
    for m in scan.find(r"(?:\b(?:in\s+)|\()?\b(" + "|".join(_ABBREVIATIONS) + r")\b\)?", 0):
        scan.take(m)
        return _ABBREVIATIONS[m.group(1)]
    for m in scan.find(r"\b(?:in\s+)?(?:([a-z]+)\s+)?([a-z]+)(?:'s)?\s+time\b"):
        first, last = m.group(1), m.group(2)
        two = _place(f"{first} {last}") if first else None
        zone = two or _place(last)
        if zone:
            scan.take_span(m.start() if two or not first else m.start(2), m.end())
            return zone
    # "in Paris" only right after a schedule phrase ("at 9 in Paris"): elsewhere it is data
    for m in scan.find(r"(?:,\s*)?\bin\s+([a-z]+)(?:\s([a-z]+))?\b"):
        near = any(0 <= m.start() - e <= 2 for _, e in (anchors or []))
        if not near:
            continue
        two = _place(f"{m.group(1)} {m.group(2)}") if m.group(2) else None
        zone = two or _place(m.group(1))
        if zone:
            scan.take_span(m.start(), m.end() if two else m.end(1))
            return zone
    return None


def _hour(h: int, ampm: str | None) -> int | None:
    ampm = (ampm or "").replace(".", "").lower()
    if ampm == "pm" and h < 12:
        h += 12
    elif ampm == "am" and h == 12:
        h = 0
    return h if 0 <= h <= 23 else None


_AMPM = r"(am\b|pm\b|a\.m\.|p\.m\.)"
_TIME = r"(\d{1,2})(?:[:.h](\d{2}))?\s*" + _AMPM + "?"


def _times(scan: _Scan, parts: _Parts) -> None:
    """Times of day: noon, midnight, "at 9", "at 8:30am", "9pm", "18:00", "half past 9", "at 9 and 17"."""
    hours: list[int] = []
    minute: int | None = None
    for m in scan.find(r"\b(?:at\s+)?(noon|midday|midnight)\b"):
        hours.append(12 if m.group(1).lower() != "midnight" else 0)
        minute = 0
        scan.take(m)
    for m in scan.find(r"\b(?:at\s+)?(half|quarter)\s+(past|to)\s+(\d{1,2})\s*" + _AMPM + "?"):
        h = _hour(int(m.group(3)), m.group(4))
        if h is None:
            continue
        past = m.group(2).lower() == "past"
        mins = 30 if m.group(1).lower() == "half" else 15
        hours.append(h if past else (h - 1) % 24)
        minute = mins if past else 60 - mins
        scan.take(m)
    pattern = (
        r"\bat\s+" + _TIME + r"(?:\s*o'?clock)?(?:\s*(?:,|and|&)\s*" + _TIME + r")?"
        r"|\b(\d{1,2})(?:[:.](\d{2}))?\s*" + _AMPM +
        r"|\b([01]?\d|2[0-3]):([0-5]\d)\b"
    )
    for m in scan.find(pattern):
        g = m.groups()
        found: list[tuple[int | None, int]] = []
        if g[0] is not None:
            found.append((_hour(int(g[0]), g[2] or g[5]), int(g[1] or 0)))
            if g[3] is not None:
                found.append((_hour(int(g[3]), g[5]), int(g[4] or 0)))
        elif g[6] is not None:
            found.append((_hour(int(g[6]), g[8]), int(g[7] or 0)))
        else:
            found.append((_hour(int(g[9]), None), int(g[10])))
        if any(h is None or not 0 <= mi <= 59 for h, mi in found):
            continue
        scan.take(m)
        for h, mi in found:
            assert h is not None
            hours.append(h)
            minute = mi
    if hours:
        parts.hour = ",".join(str(h) for h in sorted(set(hours)))
        parts.minute = str(minute or 0)
        parts.found = True


def _days_of_week(scan: _Scan, parts: _Parts) -> None:
    for m in scan.find(r"\b(?:(?:every|each|on|all)\s+)?(?:week\s?days|weekdays?|working\s+days?|business\s+days?)\b"
                       r"|\b(?:from\s+)?mon(?:day)?s?\s*(?:to|through|thru|until|-|–)\s*fri(?:day)?s?\b"):
        parts.dow = "1-5"
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:(?:every|each|on|at)\s+)?(?:the\s+)?week-?ends?\b"
                       r"|\b(?:every|each|on)?\s*saturdays?\s*(?:and|&|,)\s*sundays?\b"):
        parts.dow = "0,6"
        parts.found = True
        scan.take(m)
    day_list = _ANY_DAY + r"s?(?:\s*(?:,|and|&|or)\s*(?:on\s+)?" + _ANY_DAY + r"s?)*"
    for m in scan.find(r"\b(?:every|each|on)\s+(?:other\s+)?(" + day_list + r")\b"
                       r"|\b(" + _FULL_DAY + r"s(?:\s*(?:,|and|&|or)\s*" + _FULL_DAY + r"s)*)\b"):
        if "other" in m.group(0).lower():
            continue  # "every other tuesday" has no cron form: reported as not understood
        words = re.findall(_ANY_DAY, m.group(1) or m.group(2), re.I)
        days = sorted({_DAYS[w.lower()] for w in words})
        parts.dow = ",".join(map(str, days))
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:weekly|every\s+week|each\s+week|once\s+a\s+week)\b"):
        parts.found = True
        scan.take(m)
        if parts.dow is None:
            parts.dow = "1"


def _ordinal(word: str) -> str | None:
    word = word.lower()
    if word == "last":
        return "L"
    if word in _ORDINALS:
        return str(_ORDINALS[word])
    digits = re.match(r"(\d{1,2})", word)
    if digits and 1 <= int(digits.group(1)) <= 31:
        return digits.group(1)
    return None


def _days_of_month(scan: _Scan, parts: _Parts) -> None:
    nth = r"(first|second|third|fourth|fifth|tenth|fifteenth|twentieth|last|\d{1,2}(?:st|nd|rd|th)?)"
    for m in scan.find(r"\b(?:on\s+)?(?:the\s+)?" + nth + r"(?:\s+day)?\s+of\s+(?:every|each|the|a)\s+month\b"
                       r"|\b(?:every|each)\s+month\s+on\s+the\s+" + nth + r"\b"
                       r"|\bmonthly\s+on\s+the\s+" + nth + r"\b"
                       r"|\bon\s+the\s+" + nth + r"\s+(?:monthly|every\s+month)\b"):
        word = next(g for g in m.groups() if g)
        dom = _ordinal(word)
        if dom is None:
            continue
        parts.dom = dom
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:monthly|every\s+month|each\s+month|once\s+a\s+month)\b"):
        parts.found = True
        scan.take(m)
        if parts.dom is None:
            parts.dom = "1"
    for m in scan.find(r"\b(?:yearly|annually|every\s+year|once\s+a\s+year)\b"):
        parts.found = True
        scan.take(m)
        parts.dom, parts.month = parts.dom or "1", "1"


def _intervals(scan: _Scan, parts: _Parts, unmapped: list[str]) -> None:
    for m in scan.find(r"\bevery\s+(\d+)\s*(?:seconds?|secs?|s)\b"):
        unmapped.append(m.group(0) + " (a schedule runs at most once a minute)")
        scan.take(m)  # taken, so the planner drops the words; the note above says why
    for m in scan.find(r"\b(?:every|each)\s+(\d+)\s*(?:minutes?|mins?|m)\b"):
        n = int(m.group(1))
        if 1 <= n <= 59:
            parts.every_minutes = n
            parts.found = True
            scan.take(m)
    for m in scan.find(r"\b(?:every|each)\s+(?:half\s+(?:an\s+)?hour|half-hour)\b"):
        parts.every_minutes = 30
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:every|each)\s+quarter\s+(?:of\s+an\s+)?hour\b"):
        parts.every_minutes = 15
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:every|each)\s+minute\b"):
        parts.every_minutes = 1
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:every|each)\s+(\d+)\s*(?:hours?|hrs?|h)\b"):
        n = int(m.group(1))
        if 1 <= n <= 23:
            parts.every_hours = n
            parts.found = True
            scan.take(m)
    for m in scan.find(r"\b(?:every|each|once\s+an?)\s+hour\b|\bhourly\b"):
        parts.hourly = True
        parts.found = True
        scan.take(m)
    for m in scan.find(r"\b(?:every|each)\s+(\d+)\s*days\b"):
        n = int(m.group(1))
        if 1 <= n <= 31:
            parts.every_days = n
            parts.found = True
            scan.take(m)
    for m in scan.find(r"\b(?:at\s+)?(\d{1,2})\s+minutes?\s+past\s+(?:the|every|each)\s+hour\b"
                       r"|\bat\s+:([0-5]\d)\b"):
        parts.minute = str(int(m.group(1) or m.group(2)))
        parts.hourly = parts.hourly or parts.every_hours is None
        parts.found = True
        scan.take(m)


def _hour_range(scan: _Scan, parts: _Parts) -> None:
    for m in scan.find(r"\b(?:between|from)\s+(\d{1,2})\s*(am|pm)?\s*(?:and|to|until|till|-)\s*(\d{1,2})\s*(am|pm)?"):
        a, b = _hour(int(m.group(1)), m.group(2)), _hour(int(m.group(3)), m.group(4))
        if a is not None and b is not None and b <= a and b < 12 and not m.group(4):
            b += 12  # "from 9 to 5" is a working day
        if a is None or b is None or a >= b:
            continue
        parts.hour = f"{a}-{b}"  # a range alone is no schedule ("between 1 and 10 items")
        scan.take(m)


def _daily(scan: _Scan, parts: _Parts) -> None:
    defaults = {"morning": 9, "afternoon": 14, "evening": 18, "night": 0}
    for m in scan.find(r"\b(?:every|each)\s+(day|morning|afternoon|evening|night)\b|\b(daily|nightly)\b"
                       r"|\b(?:once\s+a\s+day)\b"):
        parts.daily = True
        parts.found = True
        word = (m.group(1) or m.group(2) or "day").lower()
        if word in defaults:
            parts.default_hour = defaults[word]
        elif word == "nightly":
            parts.default_hour = 0
        scan.take(m)
    for m in scan.find(r"\bin\s+the\s+(morning|afternoon|evening)\b|(?<=\0)\s*(morning|afternoon|evening|night)s?\b"):
        if parts.found:  # "every day in the morning", "every sunday evening"
            parts.default_hour = defaults[(m.group(1) or m.group(2)).lower()]
            parts.daily = True
            scan.take(m)


def _compose(parts: _Parts, notes: list[str]) -> str | None:
    if not parts.found:
        return None
    dom, month, dow = parts.dom or "*", parts.month or "*", parts.dow or "*"
    if parts.every_days:
        dom = f"*/{parts.every_days}"
    hour: str
    if parts.every_minutes:
        step = "*" if parts.every_minutes == 1 else f"*/{parts.every_minutes}"
        hour = parts.hour if parts.hour and "-" in parts.hour else "*"
        return f"{step} {hour} {dom} {month} {dow}"
    if parts.every_hours:
        hour = f"*/{parts.every_hours}"
        if parts.hour and "-" in parts.hour:
            hour = f"{parts.hour}/{parts.every_hours}"
        return f"{parts.minute or 0} {hour} {dom} {month} {dow}"
    if parts.hourly:
        hour = parts.hour if parts.hour and "-" in parts.hour else "*"
        return f"{parts.minute or 0} {hour} {dom} {month} {dow}"
    minute = parts.minute or "0"
    if parts.hour is None or "-" in parts.hour:
        hour = str(parts.default_hour if parts.default_hour is not None else 0)
        if parts.default_hour is None:
            notes.append("no time of day was given, so it runs at 00:00")
    elif parts.default_hour is not None and parts.default_hour >= 12 and parts.hour.isdigit() and int(parts.hour) < 12:
        hour = str(int(parts.hour) + 12)  # "every evening at 7" is 19:00
    else:
        hour = parts.hour
    return f"{minute} {hour} {dom} {month} {dow}"


_UNITS = (r"(?:second|minute|hour|day|week|fortnight|month|quarter|year|morning|afternoon|evening|night|weekday|"
          r"weekend|working\s+day|business\s+day|" + _FULL_DAY + r")s?")
_LEFTOVER = re.compile(
    r"\b(?:every|each)\s+(?:other\s+|second\s+|third\s+|few\s+|couple\s+of\s+)?(?:\d+\s+)?" + _UNITS
    + r"(?:\s+on\s+" + _ANY_DAY + r"s?)?"
    r"|\b(?:daily|weekly|monthly|hourly|nightly|fortnightly|biweekly|bimonthly|quarterly)\b"
    r"|\b(?:twice|three\s+times|\d+\s+times)\s+(?:a|an|per|every)\s+" + _UNITS
    + r"|\bon\s+" + _ANY_DAY + r"s?\b|\bat\s+\d{1,2}\b",
    re.I,
)


def parse_schedule(text: str) -> ScheduleWords:
    """The schedule a text describes, if any; ``spans`` tells the caller which characters it used."""
    scan = _Scan(text)
    parts = _Parts()
    unmapped: list[str] = []
    notes: list[str] = []
    manual = False
    leftover: list[tuple[int, int]] = []
    for m in scan.find(r"\b(?:manually|on\s+demand|by\s+hand|when\s+i\s+(?:run|start|click)\s+it)\b"):
        manual = True
        scan.take(m)
    _intervals(scan, parts, unmapped)
    _hour_range(scan, parts)
    _days_of_month(scan, parts)
    _days_of_week(scan, parts)
    _daily(scan, parts)
    _times(scan, parts)
    anchors = list(scan.spans)
    tz = find_timezone(scan, anchors)
    cron = None if manual else _compose(parts, notes)
    for m in _LEFTOVER.finditer(scan.masked):
        if "\0" in m.group(0):
            continue
        unmapped.append(m.group(0) + " (schedule not understood)")
        leftover.append(m.span())
    if tz is not None and cron is None and not manual:
        notes.append(f"the timezone {tz} was given without a schedule")
    return ScheduleWords(cron, tz, sorted(scan.spans), notes, unmapped, leftover, manual)


def _clock(minute: str, hour: str) -> str | None:
    if minute.isdigit() and hour.isdigit():
        return f"{int(hour):02d}:{int(minute):02d}"
    if minute.isdigit() and re.fullmatch(r"\d+(,\d+)+", hour):
        return " and ".join(f"{int(h):02d}:{int(minute):02d}" for h in hour.split(","))
    return None


def describe_cron(cron: str) -> str:
    """A short English reading of the cron expressions ``parse_schedule`` makes."""
    fields = cron.split()
    if len(fields) != 5:
        return cron
    minute, hour, dom, month, dow = fields
    if minute.startswith("*"):
        what = "every minute" if minute == "*" else f"every {minute[2:]} minutes"
        if hour != "*":
            what += f" between {hour.replace('-', ':00 and ')}:59" if "-" in hour else f" in hour {hour}"
    elif hour.startswith("*/") or "/" in hour:
        base, _, n = hour.partition("/")
        what = f"every {n} hours at minute {minute}" + (f" between {base}" if base not in ("*", "") else "")
    elif hour == "*" or "-" in hour:
        what = f"every hour at minute {minute}" if minute != "0" else "every hour"
        if "-" in hour:
            what += f" from {hour.split('-')[0]}:00 to {hour.split('-')[1]}:00"
    else:
        what = f"at {_clock(minute, hour) or f'{hour}:{minute}'}"
    if dow == "1-5":
        what += " on weekdays"
    elif dow == "0,6":
        what += " on weekends"
    elif dow != "*":
        names = [_DAY_NAMES[int(d) % 7] for d in dow.split(",") if d.isdigit()]
        what += " on " + ", ".join(names)
    if dom.startswith("*/"):
        what += f" every {dom[2:]} days"
    elif dom == "L":
        what += " on the last day of the month"
    elif dom != "*":
        what += f" on day {dom} of " + ("January" if month == "1" else "every month")
    elif dow == "*" and not minute.startswith("*") and hour.replace(",", "").isdigit():
        what += " every day"
    return what
