"""The query language of `syntax` as one regular expression, for the OpenAPI document.

A client (and schemathesis) can tell from the document alone which queries the service
accepts: a query matches QUERY_PATTERN exactly when `syntax.parse` accepts it (a property
test holds the two together). Written in the subset of regular expressions that Python and
ECMA-262 (JSON Schema's dialect) read alike: no \\s, \\w, \\p or look-arounds.

It is the token grammar of `syntax._tokens` plus where OR may stand, as an automaton
(states: A after a term ending in a quote or a separator, B after a term ending otherwise,
D after a lone "-", O after OR) solved into: SEP* (Y X* END | TN | -)?, with
  Y   a term and what must follow it before the next term: TQ, TN then SEP or a phrase, "-" SEP
  X   SEP, Y, or OR then a phrase or SEP+ Y
  END TN, "-", or OR SEP+ (TN or "-"), at the very end
  TQ  a term ending in a quote (phrase, filter with a quoted value, negated or not)
  TN  a term ending otherwise (word, negated word, filter with a plain value)
"""

from __future__ import annotations

from typing import Any

from app.services.search.syntax import MAX_QUERY_CHARS

_SEP = r"[ \t\n\r\f\v]"
_NOT = ' \\t\\n\\r\\f\\v"\\x00'  # what a word character is not
_CHAR = f"[^{_NOT}]"
_PHRASE = r'"[^"\x00]*"'
# A word not taken for a filter: it does not start with ASCII letters and a colon.
_TAIL = f"[^{_NOT}A-Za-z:]{_CHAR}*"
_LETTERS_BUT_OR = "(?:[A-NP-Za-z][A-Za-z]*|O(?:[A-QS-Za-z][A-Za-z]*)?|OR[A-Za-z]+)"
_WORD = f"(?:[^{_NOT}A-Za-z\\-]{_CHAR}*|{_LETTERS_BUT_OR}(?:{_TAIL})?|OR{_TAIL})"
# After a "-": a word may start with "-" and may be OR.
_NEGATED_WORD = f"(?:[^{_NOT}A-Za-z]{_CHAR}*|[A-Za-z]+(?:{_TAIL})?)"

_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


def _names(*names: str) -> str:
    return "(?:" + "|".join(_any_case(name) for name in names) + "):"


# (names, plain value, quoted value)
_FILTERS = [
    (("from", "to", "subject", "in"), f"{_CHAR}+", r'"[^"\x00]+"'),
    (("after", "before"), _DATE, f'"{_DATE}"'),
    (("account",), "[0-9]{1,18}", '"[0-9]{1,18}"'),
    (("is",), "(?:" + _any_case("unread") + "|" + _any_case("flagged") + ")", None),
    (("has",), _any_case("attachment"), None),
]
_PLAIN_FILTER = "(?:" + "|".join(_names(*n) + plain for n, plain, _ in _FILTERS) + ")"
_QUOTED_FILTER = (
    "(?:" + "|".join(_names(*n) + (quoted or f'"{plain}"') for n, plain, quoted in _FILTERS) + ")"
)

_TQ = f"(?:-?{_PHRASE}|-?{_QUOTED_FILTER})"
_TN = f"(?:{_WORD}|-{_NEGATED_WORD}|-?{_PLAIN_FILTER})"
_Y = f"(?:{_TQ}|{_TN}(?:{_SEP}|{_PHRASE})|-{_SEP})"
_X = f"(?:{_SEP}|{_Y}|OR(?:{_PHRASE}|{_SEP}+{_Y}))"
_END = f"(?:{_TN}|-|OR{_SEP}+(?:{_TN}|-))?"

QUERY_PATTERN = f"^{_SEP}*(?:{_Y}{_X}*{_END}|{_TN}|-)?$"
QUERY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_QUERY_CHARS,
    "pattern": QUERY_PATTERN,
}
