"""The `int` URL converter, bounded to PostgreSQL's BIGINT.

Werkzeug's own accepts any size, and an id past 2**63-1 would reach PostgreSQL and fail there
as a 500; failing the converter instead makes Werkzeug answer 405. So: more than 19 digits
matches no route (404), and a 19-digit number past the BIGINT range becomes 0, an id that
is never assigned, so the route answers its own 404.
"""

from werkzeug.routing import BaseConverter

BIGINT_MAX = 2**63 - 1


class IdConverter(BaseConverter):
    regex = r"\d{1,19}"
    weight = 50
    part_isolating = True

    def to_python(self, value: str) -> int:
        number = int(value)
        return number if number <= BIGINT_MAX else 0

    def to_url(self, value: int) -> str:
        return str(int(value))
