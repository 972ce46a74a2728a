"""The benchmark harness's own logic, quickly: stats, ratios and goals, report files, corpus.

The benchmarks themselves (bench/, `make bench`) are not part of `make test`: they take
minutes to hours and measure rather than check. This keeps their arithmetic and their
generator honest without a server.
"""

from __future__ import annotations

import json

from bench import report
from bench.corpus import KIB, MIB, Generator, spread, stats
from bench.stats import Row, failed, percentile, summarize


def test_percentile_interpolates_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 99) == 10
    assert percentile(list(range(101)), 95) == 95


def test_ratio_goal_and_spread():
    row = Row(
        "B1", "sync", "msgs/s", summarize([90, 100, 110]), "peer", summarize([190, 200, 210]),
        goal=(">=", 0.5),
    )  # fmt: skip
    assert row.ratio == 0.5 and row.met is True
    assert row.ratio_range == (90 / 210, 110 / 190)
    assert abs(row.project.spread - 0.2) < 1e-9
    slow = Row("B2", "noop", "ms", summarize([30]), "peer", summarize([20]), goal=("<=", 1.0))
    assert slow.met is False
    absolute = Row("B4", "p95", "ms", summarize([40]), goal=("<=", 50), goal_on="value")
    assert absolute.ratio is None and absolute.met is True


def test_a_failed_row_never_passes():
    row = failed("B5", "send throughput", "send API not available")
    assert row.met is False and row.error


def test_report_files_roundtrip(tmp_path):
    summary = tmp_path / "BENCHMARKS.md"
    summary.write_text("# Benchmarks\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\ntail\n")
    ok = Row("B1", "sync", "msgs/s", summarize([1, 2, 3]), "mbsync", summarize([4, 5, 6]))
    rows = [ok, failed("B5", "send", "send API not available")]
    result = report.Result("B1", rows, corpus={"messages": 3}, notes=["a note"])
    report.save("quick", [result], directory=tmp_path, summary=summary, with_chart=False)
    data = json.loads((tmp_path / "quick.json").read_text())
    assert data["machine"]["cores"] >= 1 and "dovecot" in data["versions"]
    again = report.Result.from_dict(data["benchmarks"]["B1"])
    assert again.rows[0].ratio == 2 / 5 and again.rows[1].error
    text = (tmp_path / "quick.md").read_text()
    assert "| B1 | sync |" in text and "not measured" in text and "a note" in text
    md = summary.read_text()
    assert "old" not in md and md.endswith("tail\n") and "Latest quick run" in md


def test_corpus_is_seeded_and_realistic():
    generator = Generator(seed=7)
    first = [generator.message(i) for i in range(300)]
    assert Generator(seed=7).message(42) == first[42]
    assert Generator(seed=8).message(42) != first[42]
    s = stats([len(m) for m in first])
    assert 5 * KIB <= s.median_bytes <= 12 * KIB
    assert s.over_50k >= 3  # about 5 %
    assert all(b"\r\n\r\n" in m and b"\n" not in m.replace(b"\r\n", b"") for m in first)
    assert any(b"=?utf-8?" in m for m in first)  # non-ASCII headers, RFC 2047
    assert any(b"multipart/alternative" in m for m in first)
    big = next(m for m in map(generator.message, range(2000)) if len(m) > MIB)
    assert b"Content-Disposition: attachment" in big
    assert spread(10, ["INBOX", "Archive"]) == spread(10, ["INBOX", "Archive"])


def test_generated_mail_parses(tmp_path):
    """The project's MIME parser reads the corpus without errors (what the sync stores)."""
    from app.mail.mime import parse_message

    generator = Generator(seed=1)
    for i in range(40):
        parsed = parse_message(generator.message(i))
        assert parsed.parse_error is None and parsed.subject
